"""Kept models load where the ecosystem loads them (issue 14): a LoRA cell's adapter in peft's layout applies to a
freshly loaded base with the trained model's logits; `--merge` equals the adapter-applied model; a full cell's
model directory is in the official layout with its processor; `harness export` writes both."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness.cli import main
from tests.core.cells import run_cell
from training_core.devices import current_device
from training_core.export import ADAPTER_PREFIX, merged_model
from training_core.model import Phi3VForCausalLM
from training_core.model.processing import Phi3VProcessor
from training_core.result import Outcome
from training_core.run import Cell
from training_core.spec import RunSpec

# a learning rate that moves the adapter far from its zero-initialised B within a few steps
TRAINED = dict(task="docvqa", model="tiny", attention="eager", precision="fp32", lora_rank=4, warmup_steps=0,
               measured_steps=4, global_batch=2, lr=1e-2, lr_warmup_steps=0, num_crops=4, gradient_checkpointing=False)


def train_in_process(out: Path, **fields) -> Cell:
    """A cell run in this process (one rank, no torchrun), so that its trained model stays in memory."""
    spec = RunSpec(**{**TRAINED, **fields})
    out.mkdir(parents=True, exist_ok=True)
    spec.save(out / "spec.json")
    args = argparse.Namespace(resume=False, stop_after=None, save_model=True)
    cell = Cell(spec, current_device(spec.gpu), out, Outcome(), args, time.time())
    cell.run()
    return cell


def _inputs(directory: Path, make_image):
    processor = Phi3VProcessor.from_pretrained(directory)
    return processor(processor.chat_prompt("<|image_1|>\nWhat is the total?"), [make_image(120, 70, seed=3)])


def _logits(model, inputs) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def _fresh_base(directory: Path, spec: RunSpec):
    """The base as another tool loads it: from the directory; 4-bit nf4 like the cell's for qlora."""
    from training_core.strategies.lora import qlora_quantization

    quantization = qlora_quantization(spec, Phi3VForCausalLM.config_class.from_pretrained(str(directory))) \
        if spec.strategy == "qlora" else None
    return Phi3VForCausalLM.from_pretrained(str(directory), attn_implementation="eager",
                                            quantization_config=quantization, dtype=torch.float32)


@pytest.mark.parametrize("strategy", ["lora", "qlora"])
def test_a_lora_cells_adapter_applies_to_a_fresh_base_with_the_trained_logits(tmp_path, make_image, strategy):
    from peft import PeftModel

    cell = train_in_process(tmp_path / "cell", strategy=strategy)
    kept = tmp_path / "cell" / "model"
    assert cell.outcome.artifacts == {"model": str(kept)}
    config = json.loads((kept / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["task_type"] == "CAUSAL_LM"
    assert {"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"} <= set(config["target_modules"])
    from safetensors.torch import load_file

    keys = list(load_file(kept / "adapter_model.safetensors"))
    assert keys and all(k.startswith(ADAPTER_PREFIX) and ".lora_" in k for k in keys)
    assert f"{ADAPTER_PREFIX}model.layers.0.self_attn.qkv_proj.lora_A.weight" in keys  # official module names
    inputs = _inputs(kept, make_image)
    trained = _logits(cell.engine.module, inputs)

    untouched = _logits(_fresh_base(kept / "base", cell.spec), inputs)
    with _no_missing_key_warning():
        applied = _logits(PeftModel.from_pretrained(_fresh_base(kept / "base", cell.spec), str(kept)), inputs)
    assert (trained - untouched).abs().max() > 1e-3, "the adapter changed nothing: the test would prove nothing"
    assert torch.allclose(applied, trained, atol=1e-5, rtol=0), (applied - trained).abs().max()
    if strategy == "lora":  # merging folds the adapter into unquantised weights: equal to the applied adapter
        merged = _logits(merged_model(kept), inputs)
        assert torch.allclose(merged, applied, atol=1e-5, rtol=0), (merged - applied).abs().max()


class _no_missing_key_warning:
    """peft warns about adapter keys it expected and did not find: the adapter must name exactly what was trained."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self.records = self._catch.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        missing = [str(w.message) for w in self.records if "missing adapter keys" in str(w.message)]
        assert not missing, missing[0][:300]


@pytest.mark.slow
def test_export_writes_the_adapter_and_the_merged_model(tmp_path, make_image):
    from peft import PeftModel

    cell_dir = tmp_path / "cell"
    result = run_cell(cell_dir, strategy="lora", precision="fp32", lr=1e-2, lr_warmup_steps=0,
                      extra_args=("--save-model",))
    assert result["status"] == "ok" and result["artifacts"] == {"model": str(cell_dir / "model")}
    assert main(["export", str(cell_dir), "--out", str(tmp_path / "adapter")]) == 0
    assert main(["export", str(cell_dir), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "preprocessor_config.json",
            "tokenizer.json"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    assert not (tmp_path / "adapter" / "base").exists()
    written = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert written["rope_scaling"]["type"] == "su" and "auto_map" not in written
    inputs = _inputs(tmp_path / "merged", make_image)
    base = Phi3VForCausalLM.from_pretrained(str(cell_dir / "model" / "base"), attn_implementation="eager")
    applied = _logits(PeftModel.from_pretrained(base, str(tmp_path / "adapter")), inputs)
    merged = _logits(Phi3VForCausalLM.from_pretrained(str(tmp_path / "merged"), attn_implementation="eager"), inputs)
    assert torch.allclose(merged, applied, atol=1e-5, rtol=0), (merged - applied).abs().max()


@pytest.mark.slow
def test_a_full_cell_keeps_an_official_model_directory(tmp_path, make_image):
    # DeepSpeed needs a process group: the cell runs as the runner runs it (the round trip of the weights themselves
    # is tests/model/test_official_format.py)
    cell_dir = tmp_path / "cell"
    result = run_cell(cell_dir, strategy="frozen_vision", precision="fp32", extra_args=("--save-model",))
    kept = cell_dir / "model"
    assert result["status"] == "ok" and result["artifacts"] == {"model": str(kept)}
    names = {p.name for p in kept.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "preprocessor_config.json",
            "tokenizer.json", "tokenizer_config.json"} <= names
    written = json.loads((kept / "config.json").read_text())
    assert written["rope_scaling"]["type"] == "su" and written["use_cache"] is True and "auto_map" not in written
    loaded, info = Phi3VForCausalLM.from_pretrained(str(kept), attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert torch.isfinite(_logits(loaded, _inputs(kept, make_image))).all()
    assert main(["export", str(cell_dir), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (kept / "model.safetensors").read_bytes()


def test_export_errors_name_the_fix(tmp_path, capsys):
    cell_dir = tmp_path / "cell"
    cell_dir.mkdir()
    assert main(["export", str(cell_dir), "--out", str(tmp_path / "o")]) == 2
    assert "not a cell directory (no spec.json)" in capsys.readouterr().err
    RunSpec(strategy="lora").save(cell_dir / "spec.json")
    assert main(["export", str(cell_dir), "--out", str(tmp_path / "o")]) == 2
    assert "no kept model" in (err := capsys.readouterr().err) and "--keep-model" in err
    (tmp_path / "full").mkdir()
    RunSpec(strategy="full").save(tmp_path / "full" / "spec.json")
    (tmp_path / "full" / "model").mkdir()
    (tmp_path / "full" / "model" / "config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, tmp_path / "full" / "model" / "model.safetensors")
    assert main(["export", str(tmp_path / "full"), "--out", str(tmp_path / "o")]) == 2
    assert "not from the cell's latest run" in capsys.readouterr().err  # issue 24 (6): no result.json keeps it
    (tmp_path / "full" / "result.json").write_text(json.dumps({"artifacts": {"model": "model"}}))
    assert main(["export", str(tmp_path / "full"), "--out", str(tmp_path / "o"), "--merge"]) == 2
    assert "--merge applies to lora/qlora" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    assert main(["export", str(tmp_path / "full"), "--out", str(tmp_path / "busy")]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "busy" / "x").read_text() == "keep me"


def _fake_adapter_cell(cell: Path, config: dict | None = None) -> Path:
    cell.mkdir(parents=True)
    RunSpec(strategy="lora").save(cell / "spec.json")
    (cell / "model").mkdir()
    config = config if config is not None else {"peft_type": "LORA", "r": 4, "target_modules": ["qkv_proj"]}
    (cell / "model" / "adapter_config.json").write_text(json.dumps(config))
    save_file({f"{ADAPTER_PREFIX}model.layers.0.self_attn.qkv_proj.lora_A.weight": torch.zeros(4, 8)},
              cell / "model" / "adapter_model.safetensors")
    (cell / "result.json").write_text(json.dumps({"status": "ok", "artifacts": {"model": str(cell / "model")}}))
    return cell


def test_export_copies_only_the_cells_own_files_and_writes_only_where_asked(tmp_path, capsys):
    """Issue 24 (6, 7, 14): a link inside the kept model (to /proc/self/environ), a corrupt adapter_config.json, a
    model from an earlier run, --out inside the cell, onto a file or a dangling link: each refused, nothing read
    through the link and nothing written."""
    cell = _fake_adapter_cell(tmp_path / "cell")
    (tmp_path / "file").write_text("mine")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for out, said in ((cell / "model" / "copy", "inside the cell's own directory"), (tmp_path / "file", "is a file"),
                      (tmp_path / "dangling", "is a symbolic link")):
        assert main(["export", str(cell), "--out", str(out)]) == 2, out
        assert said in capsys.readouterr().err, out
    assert (tmp_path / "file").read_text() == "mine" and not (tmp_path / "nowhere").exists()
    assert not (cell / "model" / "copy").exists()
    (cell / "model" / "environ").symlink_to("/proc/self/environ")
    assert main(["export", str(cell), "--out", str(tmp_path / "o1")]) == 2
    assert "environ: is a symbolic link" in capsys.readouterr().err and not (tmp_path / "o1").exists()
    (cell / "model" / "environ").unlink()
    for bad in ("{", "[]", '{"peft_type": "LORA"}'):
        (cell / "model" / "adapter_config.json").write_text(bad)
        assert main(["export", str(cell), "--out", str(tmp_path / "o2")]) == 2, bad
        assert "adapter" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    (cell / "model" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "target_modules": ["x"]}')
    (cell / "result.json").write_text(json.dumps({"status": "ok", "artifacts": {}}))  # rerun without --keep-model
    assert main(["export", str(cell), "--out", str(tmp_path / "o3")]) == 2
    assert "not from the cell's latest run" in capsys.readouterr().err
    (cell / "result.json").write_text(json.dumps({"status": "ok", "artifacts": {"model": "model"}}))
    assert main(["export", str(cell), "--out", str(tmp_path / "o4")]) == 0
    assert {p.name for p in (tmp_path / "o4").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}


def test_merge_refuses_a_config_that_claims_more_than_its_weights(tmp_path, capsys):
    """Issue 24 (9, 14): a base config of 1,000,000 layers is refused in milliseconds (it ran past 120 s and
    3.6 GB), as are a truncated safetensors file and a bad vocabulary size."""
    import time

    from safetensors.torch import save_file

    from training_core.export import ExportError, check_base

    base = tmp_path / "base"
    base.mkdir()
    save_file({"w": torch.zeros(64, 64)}, base / "model.safetensors")
    small = {"hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 16, "vocab_size": 16}
    (base / "config.json").write_text(json.dumps(small))
    check_base(base)  # what the weights hold
    for config, said in (({**small, "num_hidden_layers": 1_000_000}, "outside 1 .. 1024"),
                         ({**small, "num_hidden_layers": 1000}, "claims about"),
                         ({**small, "vocab_size": -5}, "vocab_size -5")):
        (base / "config.json").write_text(json.dumps(config))
        started = time.monotonic()
        with pytest.raises(ExportError, match=said):
            check_base(base)
        assert time.monotonic() - started < 5
    (base / "config.json").write_text(json.dumps(small))
    data = (base / "model.safetensors").read_bytes()
    (base / "model.safetensors").write_bytes(data[:20])
    with pytest.raises(ExportError, match="not a readable safetensors file"):
        check_base(base)
