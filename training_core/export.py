"""What a cell trained, written in the formats the rest of the ecosystem loads (issue 14).

- `full` / `frozen_vision`: a model directory in the official layout: `model.safetensors` (the official key set),
  `config.json` (the official layout: `Phi3VConfig.official_dict`), `generation_config.json`, and the processor's
  `preprocessor_config.json` and the tokenizer files beside them.
- `lora` / `qlora`: a peft adapter directory: `adapter_config.json` (the official module names as
  `target_modules`) and `adapter_model.safetensors` (keys `base_model.model.<official name>.lora_A/B.weight`), which
  `PeftModel.from_pretrained(base, directory)` applies to the official model, plus the processor and tokenizer
  files. A random base (the presets' `weights: random`) is written beside it in `base/`: nothing else could rebuild it.
- merged: the adapter applied to its base and folded in (`merge_and_unload`), written as a full model directory.

A cell keeps its model in `<cell dir>/model/` when asked (`python -m harness run --keep-model`, or `KEEP_MODEL=1 make
reproduce-*`); `python -m harness export CELL_DIR --out DIR [--merge]` writes it out.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import tempfile
from pathlib import Path

import torch
from torch import nn

from training_core.errors import UserError
from training_core.spec import RunSpec

MODEL_DIR = "model"  # under the cell directory
BASE_DIR = "base"  # under MODEL_DIR: a random base model of an adapter
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PREFIX = "base_model.model."  # what peft's PeftModel.save_pretrained puts before the module names


class ExportError(UserError):
    """A cell directory without a kept model, or a kept model that cannot be written out; worded for the user."""


def is_adapter(spec: RunSpec) -> bool:
    return spec.strategy in ("lora", "qlora")


def save_model_dir(model: nn.Module, processor, directory: Path, state: dict | None = None) -> None:
    """A full model directory in the official layout, with the processor and tokenizer files; `state`: the whole
    state dict when the model's own parameters are shards (ZeRO-3, FSDP2)."""
    directory.mkdir(parents=True, exist_ok=True)
    use_cache = model.config.use_cache
    model.config.use_cache = True  # training turns the cache off; the official file says true
    try:
        if state is None:
            model.save_pretrained(str(directory))
        else:
            from training_core.model.modeling import WTE_ALIAS

            model.save_pretrained(str(directory), state_dict={k: v for k, v in state.items() if k != WTE_ALIAS})
    finally:
        model.config.use_cache = use_cache
    processor.save_pretrained(directory)


def save_adapter(model: nn.Module, spec: RunSpec, processor, directory: Path, base: str,
                 state: dict | None = None) -> None:
    """The injected LoRA weights in peft's standard layout; `base` names the model they apply to; `state`: the whole
    state dict when the model's own parameters are shards (FSDP2)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from training_core.strategies.lora import lora_config

    directory.mkdir(parents=True, exist_ok=True)
    # save_embedding_layers=False: lm_head carries a LoRA, its base weight is not trained and not an adapter weight
    state = get_peft_model_state_dict(model, state_dict=state, save_embedding_layers=False)
    tensors = {ADAPTER_PREFIX + name: value.detach().to("cpu").contiguous() for name, value in state.items()}
    save_file(tensors, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = lora_config(spec)
    config.base_model_name_or_path = base
    config.task_type = "CAUSAL_LM"
    config.exclude_modules = _pruned_vision_modules(model, config.target_modules)
    config.save_pretrained(str(directory))
    processor.save_pretrained(directory)


def _pruned_vision_modules(model: nn.Module, targets) -> list[str] | None:
    """The CLIP layers that LoRA training removed (after the feature layer, `prune_unused_vision_layers`) carry no
    adapter: name their target modules so that peft applies the adapter to exactly the modules that were trained
    (else it adds untrained ones there and warns about missing keys)."""
    embedder = model.model.vision_embed_tokens
    total = model.config.vision_config().num_hidden_layers
    if embedder.num_layers_used >= total or not set(targets) & {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}:
        return None
    prefix = "model.vision_embed_tokens.img_processor.vision_model.encoder.layers"
    parts = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"]
    return [f"{prefix}.{i}.{part}" for i in range(embedder.num_layers_used, total) for part in parts
            if part.split(".")[1] in targets]


def _own_files(directory: Path) -> None:
    """Everything under `directory` is a plain file or folder of its own: a symbolic link (to /proc/self/environ, a
    user's file) or a device is refused, so export copies only what the cell wrote."""
    for root, folders, files in os.walk(directory, followlinks=False):
        for name in [*folders, *files]:
            path = Path(root) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise ExportError(f"{path}: is a symbolic link; a kept model holds only the cell's own files "
                                  "(nothing was written)")
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise ExportError(f"{path}: not a regular file (nothing was written)")


MAX_RANK = 4096  # a LoRA rank above the layers' own width adds nothing; r: 10^9 tried to allocate 256 GB


def _adapter_config(model_dir: Path) -> dict:
    from training_core.files import FileReadError, read_text
    from training_core.model.weights import MAX_CONFIG_BYTES

    path = model_dir / ADAPTER_CONFIG
    try:
        config = json.loads(read_text(path, "adapter config", MAX_CONFIG_BYTES))
    except (OSError, ValueError, FileReadError) as exc:
        raise ExportError(f"{path}: not a readable adapter config ({exc}); rerun the cell with --keep-model "
                          "--force") from None
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str) \
            or not isinstance(config.get("r"), int) or not config.get("target_modules"):
        raise ExportError(f"{path}: not a peft adapter config (needs peft_type, r and target_modules); rerun the "
                          "cell with --keep-model --force")
    problems = []
    if isinstance(config["r"], bool) or not 0 < config["r"] <= MAX_RANK:
        problems.append(f"r {config['r']!r} is outside 1 .. {MAX_RANK}")
    alpha = config.get("lora_alpha", 8)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        problems.append(f"lora_alpha {alpha!r} is not a number")
    dropout = config.get("lora_dropout", 0.0)
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        problems.append(f"lora_dropout {dropout!r} is outside 0 .. 1")
    targets = config["target_modules"]
    if not (isinstance(targets, str) or isinstance(targets, list) and all(isinstance(t, str) and t for t in targets)):
        problems.append(f"target_modules {targets!r} is neither a module name nor a list of them")
    if problems:
        raise ExportError(f"{path}: {'; '.join(problems)}; the adapter config was edited: rerun the cell with "
                          "--keep-model --force")
    return config


def check_weight_files(directory: Path, adapter: bool) -> None:
    """Every safetensors file the kept model holds is whole (its header covers the file: a truncated
    adapter_model.safetensors was handed out as if it were the adapter), and an adapter's keys are peft's."""
    from training_core.model.weights import WeightsError, header_shapes

    if not list(directory.glob("*.safetensors")):
        raise ExportError(f"{directory}: no *.safetensors weights; rerun the cell with --keep-model --force")
    try:
        shapes = header_shapes(directory)
    except WeightsError as exc:
        raise ExportError(f"{exc}; the kept model is damaged: rerun the cell with --keep-model --force") from None
    if adapter:
        foreign = [name for name in shapes if not name.startswith(ADAPTER_PREFIX) or ".lora_" not in name]
        if foreign or not shapes:
            raise ExportError(f"{directory / ADAPTER_WEIGHTS}: holds {foreign[:3] or 'no tensors'}, not LoRA weights "
                              f"({ADAPTER_PREFIX}<module>.lora_A/B.weight); rerun the cell with --keep-model --force")


def kept_model(cell_dir: Path) -> tuple[RunSpec, Path]:
    cell_dir = Path(cell_dir)
    spec_path = cell_dir / "spec.json"
    if not spec_path.is_file():
        raise ExportError(f"{cell_dir}: not a cell directory (no spec.json); give results/runs/<matrix>/<group>/"
                          "cells/<run_id>")
    spec = RunSpec.load(spec_path)
    model_dir = cell_dir / MODEL_DIR
    if model_dir.is_symlink():
        raise ExportError(f"{model_dir}: is a symbolic link; a kept model holds only the cell's own files")
    marker = ADAPTER_CONFIG if is_adapter(spec) else "config.json"
    if not (model_dir / marker).is_file():
        raise ExportError(f"{cell_dir}: no kept model ({model_dir / marker} is missing); rerun the cell with "
                          "`python -m harness run ... --keep-model --force` (or KEEP_MODEL=1 make reproduce-...)")
    try:
        result = json.loads((cell_dir / "result.json").read_text())
    except (OSError, ValueError):
        result = None
    if not isinstance(result, dict) or not (result.get("artifacts") or {}).get("model"):
        raise ExportError(f"{model_dir}: not from the cell's latest run (its result.json keeps no model: the cell "
                          "ran again without --keep-model, or has not finished); rerun it with --keep-model --force")
    _own_files(model_dir)
    if is_adapter(spec):
        _adapter_config(model_dir)
    check_weight_files(model_dir, is_adapter(spec))
    return spec, model_dir


def check_base(base: Path) -> None:
    """The base's config.json within sane bounds and its safetensors headers holding at least the parameters the
    config claims (a tampered config would otherwise allocate what it says: a million layers)."""
    from training_core.model.weights import WeightsError, header_shapes, read_config, stored_parameters

    try:
        config = read_config(base)
        stored = stored_parameters(header_shapes(base))
    except WeightsError as exc:
        raise ExportError(str(exc)) from None
    h, layers = int(config.get("hidden_size") or 0), int(config.get("num_hidden_layers") or 0)
    claimed = layers * (4 * h * h + 3 * h * int(config.get("intermediate_size") or 0)) \
        + 2 * h * int(config.get("vocab_size") or 0)
    if claimed > 1.05 * stored:
        raise ExportError(f"{base / 'config.json'}: claims about {claimed:,} decoder parameters but the weights "
                          f"hold {stored:,}; the config does not belong to these weights")


def adapter_base(model_dir: Path, config: dict | None = None) -> Path:
    """The base model directory an adapter applies to: the kept random base, else the checkpoint it was trained on
    (the adapter config's base_model_name_or_path; `config`: that config, already read and checked)."""
    if (model_dir / BASE_DIR / "config.json").is_file():
        return model_dir / BASE_DIR
    base = (config or _adapter_config(model_dir)).get("base_model_name_or_path")
    if not isinstance(base, str) or not base or not (Path(base) / "config.json").is_file():
        raise ExportError(f"{model_dir / ADAPTER_CONFIG}: base_model_name_or_path {base!r} is not a model directory "
                          "here; --merge needs the base checkpoint the adapter was trained on")
    return Path(base)


def merged_model(model_dir: Path, dtype: torch.dtype | None = None) -> nn.Module:
    """The adapter applied to its (unquantised) base and folded into the weights."""
    from peft import PeftModel

    from training_core.model import Phi3VForCausalLM
    from training_core.model.build import checkpoint_config

    adapter = _adapter_config(model_dir)
    directory = adapter_base(model_dir, adapter)
    config = checkpoint_config(directory)
    rank = adapter["r"]
    if rank > config.hidden_size:
        raise ExportError(f"{model_dir / ADAPTER_CONFIG}: r {rank} is wider than the base's hidden_size "
                          f"{config.hidden_size}; the adapter config was edited")
    base = Phi3VForCausalLM.from_pretrained(str(directory), config=config, dtype=dtype, attn_implementation="eager")
    try:
        return PeftModel.from_pretrained(base, str(model_dir)).merge_and_unload()
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:  # peft's own checks: modules, shapes, fields
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{model_dir}: the adapter does not apply to its base {directory} ({type(exc).__name__}: "
                          f"{first}); the kept model was edited or belongs to another base: rerun the cell with "
                          "--keep-model --force") from None


def export(cell_dir: Path, out: Path, merge: bool = False) -> str:
    """Write a cell's kept model to `out`; returns what was written, in words."""
    spec, model_dir = kept_model(cell_dir)
    out = Path(out)
    if out.is_symlink():
        raise ExportError(f"--out {out}: is a symbolic link; give a new directory (nothing is written through a link)")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: is a file; give a new directory (nothing was overwritten)")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"--out {out}: not empty; choose a new directory (nothing was overwritten)")
    if out.resolve().is_relative_to(Path(cell_dir).resolve()):
        raise ExportError(f"--out {out}: inside the cell's own directory; choose a directory outside it")
    if merge and not is_adapter(spec):
        raise ExportError(f"{cell_dir}: a {spec.strategy} cell keeps a full model; --merge applies to lora/qlora")
    out.parent.mkdir(parents=True, exist_ok=True)
    # written into a hidden folder beside --out and renamed at the end: an error (a full disk, a damaged kept model,
    # Ctrl-C) leaves nothing at --out that looks like an export, and nothing that blocks the rerun
    holder = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        staging = holder / "export"
        staging.mkdir()  # with the user's umask, unlike mkdtemp's private folder
        said = _write(spec, model_dir, staging, merge, out)
        if out.exists():
            out.rmdir()  # checked empty above
        os.rename(staging, out)
    except OSError as exc:
        why = exc.strerror or exc
        if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
            why = str(exc.args[0][0][-1]).split("] ", 1)[-1]  # copytree gathers (src, dst, "[Errno N] why") triples
        raise ExportError(f"--out {out}: could not write the export ({why}); nothing was left there: "
                          "free space (or fix the permission) and rerun") from None
    finally:
        shutil.rmtree(holder, ignore_errors=True)
    return said


def _write(spec: RunSpec, model_dir: Path, into: Path, merge: bool, out: Path) -> str:
    from training_core.model.processing import Phi3VProcessor

    if not is_adapter(spec):
        shutil.copytree(model_dir, into, dirs_exist_ok=True)
        return f"the {spec.strategy} model (official layout) to {out}"
    if merge:
        check_base(adapter_base(model_dir))
        processor = Phi3VProcessor.from_pretrained(model_dir)  # its config checked before the weights are loaded
        save_model_dir(merged_model(model_dir), processor, into)
        return f"the {spec.strategy} adapter merged into its base (official layout) to {out}"
    shutil.copytree(model_dir, into, dirs_exist_ok=True, ignore=shutil.ignore_patterns(BASE_DIR))
    try:
        base = str(adapter_base(model_dir))
    except ExportError:
        base = "not on this machine"
    return f"the {spec.strategy} adapter (peft layout; base: {base}) to {out}"
