"""Issue 31 (2, 3, 4): what `export` reads from a kept model is checked before it is used or handed out. A tampered
base config, adapter config or preprocessor config, or a truncated adapter, was a traceback (or a 256 GB
allocation) under `--merge` and a silently copied broken file without it; an export that fails half-way (a full disk)
left a half adapter at --out. Each is now an `error:` line naming the file and key, exit 2, with nothing at --out."""

from __future__ import annotations

import errno
import json
import shutil
import time
from pathlib import Path

import pytest

from harness.cli import main

from .test_export import train_in_process


@pytest.fixture(scope="module")
def kept_lora(tmp_path_factory) -> Path:
    """A LoRA cell that kept its model (adapter + its random base), trained in this process for one step."""
    cell_dir = tmp_path_factory.mktemp("kept") / "cell"
    cell = train_in_process(cell_dir, strategy="lora", measured_steps=1)
    assert cell.outcome.status == "ok", cell.outcome.reason
    from training_core.result import write_json_atomic
    write_json_atomic(cell_dir / "result.json", {"status": "ok", "artifacts": {"model": str(cell_dir / "model")}})
    return cell_dir


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _set(*keys, value):
    def change(data):
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value
    return change


TAMPERED = {  # name: (file under model/, change, what the error says)
    "heads_that_do_not_divide": ("base/config.json", _set("num_attention_heads", value=3),
                                 "hidden_size 64 is not a multiple of num_attention_heads 3"),
    "one_rope_factor": ("base/config.json", _set("rope_scaling", "long_factor", value=[1.0]),
                        "rope_scaling.long_factor has 1 factors; the model's head size 16 needs 8"),
    "code_as_activation": ("base/config.json", _set("hidden_act", value="os.system"),
                           "hidden_act 'os.system' is not an activation"),
    "a_million_vision_layers": ("base/config.json",
                                _set("img_processor", "vision_config", "num_hidden_layers", value=10**6),
                                "img_processor.vision_config.num_hidden_layers 1000000 is outside 1 .. 1024"),
    "rank_of_a_billion": ("adapter_config.json", _set("r", value=10**9), "r 1000000000 is outside 1 .. 4096"),
    "rank_wider_than_the_model": ("adapter_config.json", _set("r", value=100),
                                  "r 100 is wider than the base's hidden_size 64"),
    "a_module_the_model_lacks": ("adapter_config.json", _set("target_modules", value=["no_such_module"]),
                                 "the adapter does not apply to its base"),
    "alpha_in_words": ("adapter_config.json", _set("lora_alpha", value="sixteen"), "lora_alpha 'sixteen' is not a"),
    "a_million_crops": ("preprocessor_config.json", _set("num_crops", value=10**6), "num_crops=1000000 is out of"),
}


@pytest.mark.parametrize("name", sorted(TAMPERED))
def test_a_tampered_kept_model_is_refused_by_export_merge(kept_lora, tmp_path, capsys, name):
    where, change, said = TAMPERED[name]
    cell = tmp_path / "cell"
    shutil.copytree(kept_lora, cell)
    _edit_json(cell / "model" / where, change)
    started = time.monotonic()
    assert main(["export", str(cell), "--out", str(tmp_path / "out"), "--merge"]) == 2
    err = capsys.readouterr().err
    assert said in err and "\nerror: " in "\n" + err and "Traceback" not in err, err
    assert time.monotonic() - started < 60
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


@pytest.mark.parametrize("merge", [False, True])
def test_a_truncated_adapter_is_not_handed_out(kept_lora, tmp_path, capsys, merge):
    cell = tmp_path / "cell"
    shutil.copytree(kept_lora, cell)
    weights = cell / "model" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size - 100])
    assert main(["export", str(cell), "--out", str(tmp_path / "out"), *(["--merge"] if merge else [])]) == 2
    err = capsys.readouterr().err
    assert f"{weights}: not a readable safetensors file" in err and "--keep-model --force" in err
    assert not (tmp_path / "out").exists()


def test_an_export_that_fails_half_way_leaves_nothing_at_out(kept_lora, tmp_path, capsys, monkeypatch):
    """A full disk while the adapter is copied: the half-written folder is removed, --out stays free for the rerun."""
    from training_core import export as export_module

    real_copy = shutil.copyfile

    def copy_until_full(src, dst, *args, **kwargs):
        if Path(src).name == "adapter_model.safetensors":
            Path(dst).write_bytes(Path(src).read_bytes()[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(export_module.shutil, "copyfile", copy_until_full)
    monkeypatch.setattr(shutil, "copy2", lambda src, dst, **kw: copy_until_full(src, dst))
    (tmp_path / "out").mkdir()  # an empty --out given in advance stays as it was
    assert main(["export", str(kept_lora), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "could not write the export (No space left on device); nothing was left there" in err
    assert list((tmp_path / "out").iterdir()) == [] and not list(tmp_path.glob(".out.partial-*"))
    monkeypatch.undo()
    assert main(["export", str(kept_lora), "--out", str(tmp_path / "out")]) == 0
    exported = tmp_path / "out" / "adapter_model.safetensors"
    assert exported.read_bytes() == (kept_lora / "model" / "adapter_model.safetensors").read_bytes()


@pytest.mark.parametrize("config", [["not", "a", "dict"], {"peft_type": "LORA", "r": 4, "target_modules": ["qkv_proj"],
                                                            "base_model_name_or_path": 42}])
def test_an_adapters_base_is_read_from_a_checked_config(tmp_path, config):
    """Without a kept base, the adapter's base comes from its config read through the same checks as kept_model's
    (a list, or a base path that is not text, is an ExportError naming the file, not a TypeError/AttributeError)."""
    from training_core.export import ADAPTER_CONFIG, ExportError, adapter_base

    (tmp_path / ADAPTER_CONFIG).write_text(json.dumps(config))
    with pytest.raises(ExportError, match=ADAPTER_CONFIG):
        adapter_base(tmp_path)
