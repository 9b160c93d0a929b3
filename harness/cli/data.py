"""`harness data synth|convert|validate`: the datasets' commands (they import training_core's data modules, never
torch, when they run)."""

from __future__ import annotations

from pathlib import Path

from .args import positive


def add(sub) -> None:
    data = sub.add_parser("data", help="datasets: synthesise, convert, validate").add_subparsers(dest="data_cmd", required=True)

    synth = data.add_parser("synth", help="write a synthetic twin of a task")
    synth.add_argument("task")
    synth.add_argument("--out", required=True, type=Path, help="output directory")
    synth.add_argument("--n-train", type=int, default=200)
    synth.add_argument("--n-eval", type=int, default=50)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--overwrite", action="store_true", help="replace an earlier output in --out")
    synth.set_defaults(func=_synth)

    convert = data.add_parser("convert", help="convert a dataset to the conversation-format jsonl")
    convert.add_argument("task", help="ucf101, docvqa, docvqa_full, hateful_memes or nlvr2")
    convert.add_argument("--out", required=True, type=Path, help="output directory")
    convert.add_argument("--src", type=Path, help="ucf101: the UCF101_subset directory or its .tar.gz")
    convert.add_argument("--data-dir", type=Path, help="HF layouts: a local save_to_disk or parquet directory "
                         "(default: the local Hugging Face cache)")
    convert.add_argument("--limit", type=positive(int), help="convert only the first N records of each split")
    convert.add_argument("--allow-download", action="store_true", help="let the datasets library download")
    convert.add_argument("--overwrite", action="store_true")
    convert.set_defaults(func=_convert)

    validate = data.add_parser("validate", help="check a dataset and print its shape")
    validate.add_argument("task")
    validate.add_argument("source", nargs="?", help="jsonl file or directory (default: the task's HF dataset in the cache)")
    validate.add_argument("--split", choices=("train", "eval", "both"), default="both")
    validate.add_argument("--lengths", action="store_true", help="also report training sequence lengths")
    validate.add_argument("--num-crops", type=positive(int), help="for --lengths and the image checks (default: the task's)")
    validate.add_argument("--model", type=Path, help="for --lengths: a checkpoint dir whose tokenizer counts the "
                          "text (default: the tiny byte-level tokenizer, an upper bound on text tokens)")
    validate.set_defaults(func=_validate)


def _synth(args) -> int:
    from training_core.data.synth import synthesize

    counts = synthesize(args.task, args.out, n_train=args.n_train, n_eval=args.n_eval, seed=args.seed,
                        overwrite=args.overwrite)
    print(f"wrote {counts} records of the {args.task} twin to {args.out}")
    return 0


def _convert(args) -> int:
    from training_core.data.convert import convert_hf, convert_ucf101

    if args.task == "ucf101":
        if args.src is None:
            from training_core.data.records import DataError

            raise DataError(["convert ucf101 needs --src (the UCF101_subset directory or UCF101_subset.tar.gz)"])
        counts = convert_ucf101(args.src, args.out, overwrite=args.overwrite)
    else:
        counts = convert_hf(args.task, args.out, data_dir=args.data_dir, limit=args.limit,
                            overwrite=args.overwrite, allow_download=args.allow_download)
    print(f"converted {counts} records to {args.out}")
    return 0


def _validate(args) -> int:
    from training_core.data.sources import load_records
    from training_core.tasks import get_task

    task = get_task(args.task)
    splits = ("train", "eval") if args.split == "both" else (args.split,)
    for split in splits:
        records = load_records(task, split, args.source, num_crops=args.num_crops)
        n_images = sum(len(r.all_images) for r in records) if isinstance(records, list) else None
        shown = f", {n_images} images" if n_images is not None else ""
        print(f"{task.name} {split}: {len(records)} records{shown}: OK")
        if args.lengths:
            print("  " + _lengths(task, records, args))
    return 0


def _lengths(task, records, args) -> str:
    from training_core.data.stats import sequence_length_stats
    from training_core.model import Phi3VProcessor, build_tiny_tokenizer
    from training_core.model.image_processing import Phi3VImageProcessor

    crops = args.num_crops or task.num_crops
    if args.model:
        try:
            processor = Phi3VProcessor.from_pretrained(args.model, num_crops=crops)
        except (OSError, ValueError, TypeError) as exc:
            from training_core.data.records import DataError

            raise DataError([f"--model {args.model}: no tokenizer and processor to load there ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); give a checkpoint directory"]) from None
        note = f"tokenizer of {args.model}"
    else:
        processor = Phi3VProcessor(build_tiny_tokenizer(), Phi3VImageProcessor(num_crops=crops))
        note = "tiny byte-level tokenizer: text tokens are an upper bound"
    stats = sequence_length_stats(task, records, processor, num_crops=crops)
    return (f"sequence length at num_crops {crops} (336-pixel crops): mean {stats.mean:.2f}, "
            f"min {stats.minimum}, max {stats.maximum} over {stats.count} examples ({note})")
