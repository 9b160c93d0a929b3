"""Run a subprocess as if some packages were not installed: a `sitecustomize` first on PYTHONPATH puts None in
`sys.modules` for them, so `import X` raises ImportError and `importlib.util.find_spec(X)` finds nothing (what
transformers and peft ask before using an optional package)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SITECUSTOMIZE = """import sys
for name in {modules!r}:
    sys.modules[name] = None
"""

# What a stock CUDA image may lack: everything outside torch, transformers, peft, accelerate, pydantic, pyyaml,
# numpy, pillow, safetensors, tokenizers and what those require (jinja2 with torch, which transformers' chat
# templates use; psutil with accelerate; rich with transformers).
OPTIONAL = ("deepspeed", "bitsandbytes", "av", "datasets", "flash_attn", "Levenshtein", "rapidfuzz", "matplotlib",
            "pandas", "pynvml", "pytest")


def env_without(tmp_path: Path, modules: tuple[str, ...]) -> dict[str, str]:
    directory = tmp_path / "blocked-site"
    directory.mkdir(exist_ok=True)
    (directory / "sitecustomize.py").write_text(SITECUSTOMIZE.format(modules=list(modules)))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(directory), str(ROOT)]), "OMP_NUM_THREADS": "1"}
