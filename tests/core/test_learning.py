"""Learning through the image path, on the tiny preset and the Hateful Memes twin: from chance to >= 0.9 accuracy,
while the same run with every image blanked stays near chance (the answer follows only from the image)."""

import pytest

from .cells import run_cell

FIELDS = dict(task="hateful_memes", strategy="full", precision="fp32", mode="accuracy", num_crops=4, global_batch=8,
              lr=5e-3, lr_warmup_steps=5, epochs=5, synthetic_train=160, synthetic_eval=64, eval_batch=16,
              max_new_tokens=8, gradient_checkpointing=False, warmup_steps=0, measured_steps=1)


@pytest.mark.slow
def test_images_are_what_the_model_learns_from(tmp_path):
    seen = run_cell(tmp_path / "images", **FIELDS)
    blank = run_cell(tmp_path / "blank", image_ablation="blank", **FIELDS)
    assert seen["status"] == blank["status"] == "ok", seen["reason"] or blank["reason"]
    m, b = seen["metrics"], blank["metrics"]
    # before training: no better than chance (the untrained model does not even answer yes/no)
    assert m["accuracy_before"] <= 0.5 and abs(m["auroc_before"] - 0.5) < 0.15
    assert m["accuracy"] >= 0.9 and m["auroc"] >= 0.95
    # blanked images: the model learns the answer format (loss falls) but cannot tell the classes apart
    assert b["loss_last"] < 0.5 * b["loss_first"]
    assert b["accuracy"] <= 0.65 and abs(b["auroc"] - 0.5) < 0.15


def test_a_tampered_training_position_is_refused_before_resuming(tmp_path):
    """Issue 24 (19): a step edited to 10^6 (it ended `ok` with 0 measured steps), a step of 0, missing keys (a
    KeyError) and text values: each a CheckpointError naming position.json and the key."""
    import pytest

    from training_core.checkpoint import CheckpointError, check_position

    good = {"step": 3, "epoch": 0, "consumed": 6, "series": {"loss": [1.0]}, "run_id": "x"}
    path = tmp_path / "position.json"
    check_position(good, path, total_steps=8)
    for position, said in (({**good, "step": 10**6}, "step 1000000 is not inside this cell's run (1 .. 7)"),
                           ({**good, "step": 0}, "step 0 is not inside"), ({"run_id": "x"}, "no 'step'"),
                           ({**good, "epoch": "0"}, "epoch is '0'"), ({**good, "series": []}, "series"),
                           ([1], "not a JSON object")):
        with pytest.raises(CheckpointError, match=said.replace("(", r"\(").replace(")", r"\)")) as exc:
            check_position(position, path, total_steps=8)
        assert str(path) in str(exc.value)


class _Engine:
    """The state a DDP engine saves (weights and optimiser), without a model around it."""

    def __init__(self, value: float):
        import torch

        self.weight = torch.nn.Parameter(torch.full((4,), value))
        self.optimizer = torch.optim.AdamW([self.weight], lr=0.1)

    def state_dict(self):
        return {"weight": self.weight.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        with __import__("torch").no_grad():
            self.weight.copy_(state["weight"])
        self.optimizer.load_state_dict(state["optimizer"])


def test_a_truncated_checkpoint_is_named_and_the_intact_one_before_it_is_resumed_from(tmp_path, capsys):
    """Issue 24 (21): a truncated engine.pt was described as 'not tensors and plain data only' and failed the resume,
    although the checkpoint before it was intact."""
    import torch

    from training_core import checkpoint

    for step in (2, 4):
        checkpoint.save(_Engine(float(step)), tmp_path, step, {"step": step, "epoch": 0, "consumed": 2 * step,
                                                               "series": {"loss": [1.0] * step}}, "cell")
    newest = tmp_path / "checkpoints" / "step-00000004" / "engine.pt"
    saved_size = newest.stat().st_size
    newest.write_bytes(newest.read_bytes()[: saved_size // 2])

    engine = _Engine(0.0)
    position, skipped = checkpoint.resume(engine, tmp_path, "cell", total_steps=8)
    assert position["step"] == 2 and torch.equal(engine.weight.detach(), torch.full((4,), 2.0))
    (said,) = skipped
    assert f"{newest}: truncated: {saved_size // 2} bytes, {saved_size} when it was saved" in said
    assert "not tensors and plain data" not in said
    assert "not resuming from step-00000004" in capsys.readouterr().err

    # a checkpoint of an older harness version (its COMPLETE lists no files): the torch file itself is told apart
    (newest.parent / checkpoint.MARKER).write_text("step 4\n")
    position, (said,) = checkpoint.resume(_Engine(0.0), tmp_path, "cell", total_steps=8)
    assert position["step"] == 2 and f"{newest}: not a complete torch file (truncated or damaged" in said
    # when no checkpoint is sound, the newest one's problem is the error, and nothing was changed
    (tmp_path / "checkpoints" / "step-00000002" / "rng-rank0.json").write_text("{")
    engine = _Engine(9.0)
    with pytest.raises(checkpoint.CheckpointError, match="step-00000004/engine.pt: not a complete torch file"):
        checkpoint.resume(engine, tmp_path, "cell", total_steps=8)
    assert torch.equal(engine.weight.detach(), torch.full((4,), 9.0))
    assert checkpoint.resume(_Engine(0.0), tmp_path / "none", "cell") == (None, [])


def test_a_planted_engine_file_runs_nothing_and_a_checkpoint_of_another_cell_is_refused(tmp_path):
    """Nothing of a checkpoint is unpickled beyond tensors and plain data, even when the planter also fixed the sizes
    COMPLETE lists; a checkpoint written by another spec (run_id) is refused. Neither changes the engine."""
    import json

    import torch

    from training_core import checkpoint

    from .test_cells import _Payload

    position = {"step": 3, "epoch": 0, "consumed": 6, "series": {"loss": [1.0] * 3}}
    step = checkpoint.save(_Engine(3.0), tmp_path, 3, position, "cell")
    refused_engine = _Engine(9.0)
    with pytest.raises(checkpoint.CheckpointError, match=f"{step} was written by cell cell, not by this cell"):
        checkpoint.resume(refused_engine, tmp_path, "another", total_steps=8)
    marker = tmp_path / "PWNED"
    torch.save(_Payload(str(marker)), step / "engine.pt")
    listed = json.loads((step / checkpoint.MARKER).read_text())
    listed["files"]["engine.pt"] = (step / "engine.pt").stat().st_size
    (step / checkpoint.MARKER).write_text(json.dumps(listed))
    with pytest.raises(checkpoint.CheckpointError, match=f"refusing {step / 'engine.pt'}: not tensors and plain data"):
        checkpoint.resume(refused_engine, tmp_path, "cell", total_steps=8)
    assert not marker.exists() and torch.equal(refused_engine.weight.detach(), torch.full((4,), 9.0))


def _rewrite(step_dir, name, content: bytes):
    """Replace one checkpoint file and fix the size COMPLETE lists for it, as a careful tamperer would."""
    import json

    from training_core import checkpoint

    (step_dir / name).write_bytes(content)
    listed = json.loads((step_dir / checkpoint.MARKER).read_text())
    listed["files"][name] = len(content)
    (step_dir / checkpoint.MARKER).write_text(json.dumps(listed))


@pytest.mark.parametrize("damage", ["mfu_in_metrics_before", "text_in_loss", "empty_rng", "empty_engine",
                                    "engine_of_another_shape", "pickled_engine", "fifo_position", "fifo_marker"])
def test_every_file_of_a_checkpoint_is_checked_before_it_is_chosen(tmp_path, damage):
    """Issue 31 (2): with COMPLETE's sizes rewritten, `metrics_before: {mfu: 0.99}` was shown as the row's MFU, text in
    `series.loss` broke the row, an empty RNG or engine file was a KeyError once the checkpoint had been chosen, and
    a legacy-pickle engine.pt was called truncated. Each is now named, and the intact checkpoint before it is used."""
    import io
    import json
    import pickle

    import torch

    from training_core import checkpoint

    for step in (2, 4):
        checkpoint.save(_Engine(float(step)), tmp_path, step,
                        {"step": step, "epoch": 0, "consumed": 2 * step, "series": {"loss": [1.0] * step},
                         "metrics_before": {"accuracy_before": 0.5}}, "cell")
    newest = tmp_path / "checkpoints" / "step-00000004"
    position = json.loads((newest / "position.json").read_text())
    if damage == "mfu_in_metrics_before":
        position["metrics_before"]["mfu"] = 0.99
        name, content, said = "position.json", json.dumps(position), "metrics_before holds 'mfu'"
    elif damage == "text_in_loss":
        position["series"]["loss"][1] = "nan please"
        name, content, said = "position.json", json.dumps(position), "series 'loss' is not a list of at most 4 numbers"
    elif damage == "empty_rng":
        name, content, said = "rng-rank0.json", "{}", "python is not Python's RNG state"
    elif damage == "empty_engine":
        buffer = io.BytesIO()
        torch.save({}, buffer)
        name, content, said = "engine.pt", buffer.getvalue(), "the engine state lacks ['optimizer', 'weight']"
    elif damage == "engine_of_another_shape":
        buffer = io.BytesIO()
        torch.save({"weight": torch.ones(7), "optimizer": _Engine(0.0).optimizer.state_dict()}, buffer)
        name, content, said = "engine.pt", buffer.getvalue(), "weight is (7,), this cell's is (4,)"
    elif damage == "pickled_engine":
        name, content, said = "engine.pt", pickle.dumps({"weight": [1.0]}), "engine.pt: a bare pickle (torch's legacy format"
    else:  # a named pipe where a file belongs: resuming hung in its read, holding the group's lock
        import os

        name = {"fifo_position": "position.json", "fifo_marker": checkpoint.MARKER}[damage]
        (newest / name).unlink()
        os.mkfifo(newest / name)
        name, said = None, f"{newest / ('position.json' if damage == 'fifo_position' else checkpoint.MARKER)}: not a " \
            "regular file (a named pipe or device)"
    if name is not None:
        _rewrite(newest, name, content.encode() if isinstance(content, str) else content)

    engine = _Engine(0.0)
    resumed, (skipped,) = checkpoint.resume(engine, tmp_path, "cell", total_steps=8)
    assert resumed["step"] == 2 and torch.equal(engine.weight.detach(), torch.full((4,), 2.0))
    assert said in skipped, skipped
    assert "truncated" not in skipped
