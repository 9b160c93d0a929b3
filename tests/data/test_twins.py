import hashlib

import pytest
from torch.utils.data import DataLoader

from training_core.data.collate import EvalCollator, TrainCollator
from training_core.data.datasets import EvalDataset, TrainDataset
from training_core.data.encode import IGNORE_INDEX, answer_text
from training_core.data.sources import load_records
from training_core.data.stats import sequence_length_stats
from training_core.data.synth import TWINS, synthesize
from training_core.model import Phi3VProcessor, build_tiny_tokenizer
from training_core.model.image_processing import Phi3VImageProcessor
from training_core.tasks import get_task

TWIN_TASKS = ["docvqa", "hateful_memes", "nlvr2", "ucf101"]


def _digest(directory):
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(directory)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    return {t: (root / t, synthesize(t, root / t, n_train=6, n_eval=4, seed=7)) for t in TWIN_TASKS}


@pytest.mark.parametrize("task_name", TWIN_TASKS)
def test_twin_round_trips_through_loader_and_collator(twins, task_name):
    directory, counts = twins[task_name]
    assert counts == {"train": 6, "eval": 4}
    task = get_task(task_name)
    processor = Phi3VProcessor(build_tiny_tokenizer(), Phi3VImageProcessor(num_crops=task.num_crops, crop_size=56))
    train = load_records(task, "train", directory)
    evals = load_records(task, "eval", directory)
    assert len(train) == 6 and len(evals) == 4
    pad = processor.tokenizer.pad_token_id
    loader = DataLoader(TrainDataset(train, task, processor), batch_size=3,
                        collate_fn=TrainCollator(pad, task.keep_attention_mask))
    for batch in loader:
        n_images = batch["pixel_values"].shape[0]
        assert n_images == batch["num_images"] and (batch["input_ids"] < 0).any()
        assert batch["pixel_values"].shape[1:] == (task.num_crops + 1, 3, 56, 56)
        # only answer tokens are supervised: every supervised span decodes to "<answer><|end|>\n<|endoftext|>"
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
            supervised = [int(t) for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
            text = processor.tokenizer.decode(supervised)
            assert text.endswith("<|end|>\n<|endoftext|>") and "<|user|>" not in text
    eval_batch = EvalCollator(pad)([EvalDataset(evals, task, processor)[i] for i in range(4)])
    assert len(eval_batch["answers"]) == 4 and eval_batch["attention_mask"].shape == eval_batch["input_ids"].shape


def test_twin_answers_follow_the_image(twins):
    """The label is a function of the picture: identical (label -> cue) pairs across records."""
    directory, _ = twins["hateful_memes"]
    from PIL import Image

    records = load_records(get_task("hateful_memes"), "train", directory)
    labels = {r.conversations[0].assistant for r in records}
    assert labels == {"yes", "no"}
    for r in records:
        image = Image.open(r.image_root / r.conversations[0].images[0]).convert("RGB")
        colours = image.getcolors(1 << 20)
        dark_red = sum(n for n, c in colours if c[0] > 120 and c[1] < 40 and c[2] < 60)
        light_blue = sum(n for n, c in colours if abs(c[0] - 150) < 15 and abs(c[1] - 200) < 15 and c[2] > 235)
        assert (dark_red > light_blue) == (r.conversations[0].assistant == "yes")


def test_nlvr2_twin_answers_follow_the_shape_counts(tmp_path):
    """The first turn is true exactly when the left picture holds more shapes (more ink on the background); a
    follow-up turn, where present, asks the mirrored statement and has the opposite answer. True/False balanced."""
    synthesize("nlvr2", tmp_path, n_train=16, n_eval=0, seed=3)
    records = load_records(get_task("nlvr2"), "train", tmp_path)

    def ink(record, ref):
        return sum(n for n, c in record.open_image(ref).getcolors(1 << 20) if c != (245, 245, 235))

    firsts = [r.conversations[0] for r in records]
    assert sorted(t.assistant for t in firsts) == ["False"] * 8 + ["True"] * 8
    follow_ups = 0
    for r in records:
        first = r.conversations[0]
        left, right = (ink(r, ref) for ref in first.images)
        assert (left > right) == (first.assistant == "True"), first.user
        for turn in r.conversations[1:]:
            follow_ups += 1
            assert not turn.images and "right image contains more" in turn.user
            assert turn.assistant == ("False" if first.assistant == "True" else "True")
    assert follow_ups > 0


@pytest.mark.parametrize("task_name", TWIN_TASKS)
def test_twins_are_deterministic_by_seed(tmp_path, task_name):
    a = synthesize(task_name, tmp_path / "a", n_train=3, n_eval=2, seed=1)
    synthesize(task_name, tmp_path / "b", n_train=3, n_eval=2, seed=1)
    synthesize(task_name, tmp_path / "c", n_train=3, n_eval=2, seed=2)
    assert a == {"train": 3, "eval": 2}
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_synth_refuses_to_overwrite(tmp_path):
    from training_core.data.records import DataError

    synthesize("nlvr2", tmp_path, n_train=1, n_eval=1)
    with pytest.raises(DataError, match="exists"):
        synthesize("nlvr2", tmp_path, n_train=1, n_eval=1)
    with pytest.raises(DataError, match="no synthetic twin"):
        synthesize("vqa", tmp_path / "x", n_train=1, n_eval=1)
    assert set(TWINS) >= set(TWIN_TASKS)


def test_docvqa_twin_mean_length_matches_the_documented_2443(tmp_path):
    """Full preset geometry (336-pixel crops) at num_crops 16: within 10% of the documented 2443.23 tokens."""
    synthesize("docvqa", tmp_path, n_train=120, n_eval=0, seed=0, page_scale=0.25)
    task = get_task("docvqa")
    records = load_records(task, "train", tmp_path / "train.jsonl")
    processor = Phi3VProcessor(build_tiny_tokenizer(), Phi3VImageProcessor(num_crops=16))
    stats = sequence_length_stats(task, records, processor, num_crops=16)
    assert abs(stats.mean - 2443.23) / 2443.23 < 0.10, stats
    # the byte-level tokenizer over-counts text; image tokens alone are within the window too
    text_free = sum(
        2509 if r.open_image(r.conversations[0].images[0]).size[1] / r.open_image(r.conversations[0].images[0]).size[0] < 1.33 else 1933
        for r in records
    ) / len(records)
    assert abs(text_free - 2443.23) / 2443.23 < 0.10
    assert stats.minimum >= 1933 and stats.maximum <= 2509 + 200
    sample = processor.tokenizer.decode(processor.tokenizer(answer_text("x"), add_special_tokens=False).input_ids)
    assert sample == "x<|end|>\n<|endoftext|>"


# A fingerprint of each twin's output (3 train + 1 eval records, seed 0: the jsonl text and the decoded pixels) at
# its generator version. When a twin's output changes, this fails until its `version` is bumped: the version is part
# of the run_id of every cell on that twin, so stored rows measured on the old data are not kept as the new.
TWIN_FINGERPRINTS = {
    "docvqa": (1, "19c6582252831042"),
    "hateful_memes": (1, "a705029fee375e62"),
    "nlvr2": (2, "c97e7819b86f39f2"),
    "ucf101": (1, "2e15c9d621e960d7"),
}


def _fingerprint(task: str, directory) -> str:
    import numpy as np
    from PIL import Image

    synthesize(task, directory, n_train=3, n_eval=1, seed=0)
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.suffix == ".jsonl":
            digest.update(path.name.encode() + path.read_bytes())
        elif path.suffix in (".png", ".jpg"):
            with Image.open(path) as image:
                digest.update(path.name.encode() + np.asarray(image.convert("RGB")).tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("task", sorted(TWIN_FINGERPRINTS))
def test_a_changed_twin_has_a_new_version(task, tmp_path):
    version, fingerprint = TWIN_FINGERPRINTS[task]
    got = _fingerprint(task, tmp_path)
    assert (TWINS[task].version, got) == (version, fingerprint), (
        f"the {task} twin's output or version changed: bump {TWINS[task].__name__}.version and pin "
        f"({TWINS[task].version}, {got!r}) here (its cells then get new run_ids, so old rows are not reused)")


def test_synth_never_overwrites_silently_and_overwrite_leaves_no_stale_images(tmp_path):
    """Issue 24 (6, 14): images already there (without their jsonl) are not overwritten without --overwrite; with
    it, the earlier twin's images are gone (4 then 2 examples: only the 2 new ones' images remain); --out onto a file
    is an error."""
    from training_core.data.records import DataError

    synthesize("docvqa", tmp_path / "d", n_train=4, n_eval=1, seed=0)
    first = {p.relative_to(tmp_path) for p in (tmp_path / "d" / "images").rglob("*.*")}
    for jsonl in (tmp_path / "d").glob("*.jsonl"):
        jsonl.unlink()
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "d" / "images").rglob("*.*")}
    with pytest.raises(DataError, match="exists: choose another --out or pass --overwrite"):
        synthesize("docvqa", tmp_path / "d", n_train=2, n_eval=1, seed=0)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "d" / "images").rglob("*.*")} == stamp
    synthesize("docvqa", tmp_path / "d", n_train=2, n_eval=1, seed=1, overwrite=True)
    now = {p.relative_to(tmp_path) for p in (tmp_path / "d" / "images").rglob("*.*")}
    assert len(now) < len(first) and all((tmp_path / p).stat().st_mtime_ns not in stamp.values() for p in now)
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="is a file"):
        synthesize("docvqa", tmp_path / "file", n_train=1, n_eval=1)
