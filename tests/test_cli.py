import json

from harness.cli import main


def test_data_synth_then_validate(tmp_path, capsys):
    out = tmp_path / "memes"
    assert main(["data", "synth", "hateful_memes", "--out", str(out), "--n-train", "4", "--n-eval", "2"]) == 0
    assert "wrote {'train': 4, 'eval': 2}" in capsys.readouterr().out
    assert main(["data", "validate", "hateful_memes", str(out), "--lengths", "--num-crops", "4"]) == 0
    printed = capsys.readouterr().out
    assert "hateful_memes train: 4 records, 4 images: OK" in printed
    assert "sequence length at num_crops 4" in printed


def test_validate_reports_problems_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "train.jsonl").write_text(json.dumps({"id": "a", "source": "s", "conversations": [
        {"images": ["../x.png"], "user": "q", "assistant": "a"}]}) + "\n")
    assert main(["data", "validate", "hateful_memes", str(tmp_path), "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'train.jsonl'}:1:" in err and "escapes the image root" in err


def test_convert_ucf101_needs_a_source(tmp_path, capsys):
    assert main(["data", "convert", "ucf101", "--out", str(tmp_path)]) == 2
    assert "needs --src" in capsys.readouterr().err
