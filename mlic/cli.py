"""The `mlic` command and the shared body of `train/*.py`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlic.config import CONFIGS
from mlic.data.formats import FORMATS, all_options
from mlic.errors import MlicError
from mlic.ranks import leave_launched_process


def default_config(model: str) -> Path:
    """configs/<model>.yaml as shipped with mlic (configs/finetune.yaml for timm/ and hf/ backbones); an
    error saying where it looked if it is not there."""
    path = CONFIGS / ("finetune.yaml" if by_library(model) else f"{model}.yaml")
    if not path.is_file():
        raise MlicError(f"no default config for {model!r}: looked for {path}; pass --config FILE")
    return path


def by_library(model: str) -> bool:
    """A name under a backbone library's prefix (timm/..., hf/...), not one of the report's fixed names. The
    registry is imported on use: its adapters load torchvision and the model stack, which most commands need not
    (the config's format registry brings torch itself already)."""
    from mlic.models.backbones import by_prefix

    return by_prefix(model)


def train_main(model: str, argv: list[str] | None = None) -> int:
    """`train/<model>.py [--config FILE] [key=value ...]`: configs/<model>.yaml unless --config is given.
    A timm/ or hf/ name is the model to train, whatever the config file names."""
    return _train_run(model, argv)


def train_entry(model: str, argv: list[str] | None = None) -> None:
    """train/<model>.py's whole process: `train_main`, then the exit a launched process needs (`mlic.ranks`)."""
    sys.exit(leave_launched_process(train_main(model, argv)))


def entry() -> None:
    """The `mlic` command's whole process: `main`, then the exit a launched process needs (`mlic.ranks`)."""
    sys.exit(leave_launched_process(main()))


def _train_run(model: str, argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog=f"train/{model}.py", description=f"Train {model} (Accelerate-aware).")
    parser.add_argument("--config", help=f"experiment YAML (default: configs/{model}.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="check the config and build the run (data, model, "
                        "accelerate's prepare), print what it would train, and stop")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=3e-4 train.epochs=2")
    # intermixed: `--config` may come after overrides, as when slurm/*.sh puts run.output_dir first
    args = parser.parse_intermixed_args(argv)
    try:
        from mlic.config import load_config
        from mlic.disk import quiet_full_disk_in_threads

        quiet_full_disk_in_threads()
        named = [f"model.name={model}"] if by_library(model) else []
        cfg = load_config(args.config or default_config(model), named + args.overrides)
        if args.dry_run:
            from mlic.training.build import dry_run

            plan = dry_run(cfg)
            if os.environ.get("RANK", "0") == "0":
                print("dry run, nothing trained: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                                              for k, v in plan.items()))
            return 0
        from mlic.training.engine import fit

        fit(cfg)  # a stop request ends it early, after its checkpoint: exit 0, rerunning resumes
    except MlicError as exc:
        _print_error(exc)
        return 1
    return 0


def at_least(low: int):
    """An argparse type: an integer of at least `low` (argparse's own error line otherwise)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is less than {low}")
        return value

    return parse


def _print_error(exc: MlicError) -> None:
    """One line; an error that every rank raises alike is printed by the first one only."""
    if not getattr(exc, "same_on_every_rank", False) or os.environ.get("RANK", "0") == "0":
        print(f"error: {one_line(exc)}", file=sys.stderr)


def one_line(exc: MlicError) -> str:
    """The error's message as one line. A DataLoader worker's error reaches the main process re-raised with the
    worker's traceback in its text (torch's ExceptionWrapper): only the original message is kept."""
    text = str(exc)
    raised_as = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    if "\nOriginal Traceback" in text and raised_as in text:
        text = text.rsplit(raised_as, 1)[1]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _demo_data(args) -> int:
    from mlic.data.demo import write_demo_data

    out = write_demo_data(args.dir, args.images, args.seed)
    print(f"wrote {args.images} images and 14 annotation files to {out}")
    return 0


def _mosaic_data(args) -> int:
    from mlic.data.mosaic import write_mosaics

    out = write_mosaics(args.dir, args.images, "test" if args.test else "train", args.seed, labelled=not args.test)
    print(f"wrote {args.images} Fashion-MNIST mosaics to {out}")
    return 0


def _check_data(args) -> int:
    from mlic.data.check import check_data
    from mlic.data.datasets import printable

    labels = set(args.labels.split(",")) if args.labels else None
    fmt = FORMATS[args.format]
    given = {o.key: getattr(args, o.key) for o in all_options() if getattr(args, o.key) is not None}
    foreign = [o for o in all_options() if o.key in given and fmt.option(o.key) is None]
    if foreign:  # SPEC's --image-column and --label-column may come with any format, as before: said, not used
        print(f"warning: {', '.join(o.flag for o in foreign)}: not an option of --format {fmt.name}, ignored",
              file=sys.stderr)
        given = {key: value for key, value in given.items() if fmt.option(key) is not None}
    problems, warnings, notes = check_data(args.root, fmt.name, labels, args.workers, args.split, args.max_pixels,
                                           **given)
    for line in problems:
        print(line)
    for line in warnings + notes:  # conversions training makes too: stderr, so stdout stays one line per problem
        print(line, file=sys.stderr)
    print(f"{len(problems)} problem(s), {len(warnings)} warning(s) in {printable(args.root)}", file=sys.stderr)
    return 1 if problems or (args.strict and warnings) else 0


def _train(args) -> int:
    return train_main(args.model, args.args)


def _predict(args) -> int:
    from mlic.serving.inference import predict_command

    return predict_command(args.model_dir, args.images, args.out, args.probs, args.allow_bad, args.batch_size,
                           args.workers)


def _evaluate(args) -> int:
    from mlic.serving.inference import evaluate_command

    return evaluate_command(args.model_dir, args.data_root, args.split, args.json, args.format)


def _analyze(args) -> int:
    from mlic.reporting.analyze import analyze

    for path in analyze(Path(args.run_dir), args.data, args.examples):
        print(path)
    return 0


def _export(args) -> int:
    from mlic.serving.onnx_export import export_onnx_command

    return export_onnx_command(args.model_dir, args.onnx, args.opset, args.check)


def _report(args) -> int:
    from mlic.reporting.report import write_report

    print(write_report(Path(args.run_dir), args.data))
    return 0


def _tables(args) -> int:
    from mlic.reporting.tables import tables_command

    return tables_command(args.table, args.scale, args.dry_run, args.collect, args.overrides, args.runs, args.submit,
                          args.sbatch_args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlic", description="Multi-label image classification.")
    sub = parser.add_subparsers(dest="command", required=True)
    _data_commands(sub)
    _training_commands(sub)
    _model_commands(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MlicError as exc:
        _print_error(exc)
        return 1


def _data_commands(sub) -> None:
    from mlic.config import DataConfig

    p = sub.add_parser("demo-data", help="write the synthetic demo corpus (helsinki layout)")
    p.add_argument("dir")
    p.add_argument("--images", type=at_least(1), default=2000)
    p.add_argument("--seed", type=at_least(0), default=0)
    p.set_defaults(func=_demo_data)

    p = sub.add_parser("mosaic-data", help="multi-label mosaics of real Fashion-MNIST photos (Debian's dataset-fashion-mnist)")
    p.add_argument("dir")
    p.add_argument("--images", type=at_least(1), default=2000)
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--test", action="store_true", help="a test folder: t10k tiles, no annotations")
    p.set_defaults(func=_mosaic_data)

    p = sub.add_parser("check-data", help="validate a dataset without training; exit 1 on any problem")
    p.add_argument("root")
    p.add_argument("--format", choices=list(FORMATS), default="helsinki",
                   help="; ".join(f"{f.name}: {f.layout}" for f in FORMATS.values()))
    p.add_argument("--labels", help="comma-separated known label names: others are reported")
    p.add_argument("--split", help="the split to read (data.split; hf: data.hf_split, default train): csv "
                   "ROOT/SPLIT.csv (default labels.csv), coco instances_SPLIT.json (train2017), voc "
                   "ImageSets/Main/SPLIT.txt (trainval), openimages SPLIT-annotations-human-imagelabels.csv (train)")
    for option in all_options():  # each format's own keys (mlic.data.formats)
        owners = ", ".join(f.name for f in FORMATS.values() if f.option(option.key) is not None)
        p.add_argument(option.flag, dest=option.key, choices=option.choices or None,
                       help=f"{owners}: {option.help} (data.{option.key}; default {option.default})")
    p.add_argument("--max-pixels", type=at_least(1), help="larger images are problems (data.max_pixels, default "
                   f"{DataConfig.max_pixels:,})")
    p.add_argument("--strict", action="store_true", help="exit 1 on conversion warnings too (16-bit, "
                   "transparency, EXIF orientation, ICC profile, animated)")
    p.add_argument("--workers", type=at_least(0), default=4)
    p.set_defaults(func=_check_data)


def _training_commands(sub) -> None:
    p = sub.add_parser("train", help="train a model in this process (use `accelerate launch train/X.py` for many)")
    p.add_argument("model", help="cnn, resnet152, densenet161, vit (configs/MODEL.yaml), or any backbone: "
                   "timm/<architecture>, hf/<hub name or folder> (configs/finetune.yaml)")
    # The rest goes to train_main's own parser, as for train/<model>.py: here, argparse would take an
    # empty `overrides` before `--config` and then reject `key=value` after it.
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="[--config FILE] [key=value ...]")
    p.set_defaults(func=_train)

    p = sub.add_parser("tables", help="run or submit the grid of one report table, and print it in the report's layout")
    p.add_argument("table", help="1-6, ablations, or modern")
    p.add_argument("--scale", choices=["demo", "full"], default="full",
                   help="demo: tiny runs on the demo data (CPU, minutes); full: the real recipes")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their exact commands")
    p.add_argument("--collect", action="store_true", help="only read the run folders and print the table")
    p.add_argument("--submit", action="store_true", help="submit the runs to SLURM as one job array "
                   "(slurm/tables.sh, from a checkout); then --collect once it is done")
    p.add_argument("--sbatch", dest="sbatch_args", action="append", default=[], metavar="OPTION",
                   help="with --submit: an sbatch option (repeatable), e.g. --sbatch=--gres=gpu:1 --sbatch=--cpus-per-task=1")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for every run (repeatable), e.g. --set train.epochs=1")
    p.add_argument("--runs", default="runs", help="folder of the run folders (relative to the current folder)")
    p.set_defaults(func=_tables)


def _model_commands(sub) -> None:
    p = sub.add_parser("predict", help="write the course's results file (and probabilities) for a folder of images")
    p.add_argument("model_dir", help="an exported model, e.g. runs/vit/model")
    p.add_argument("images", help="a folder of images (or a ROOT holding images/)")
    p.add_argument("--out", default=None, help="0/1 rows, one per image in image-number order (needs im<N>.<ext> "
                   "names, one file per number); default results.txt when --probs is not given")
    p.add_argument("--probs", help="CSV: file name and one probability column per label")
    p.add_argument("--allow-bad", action="store_true", help="write all-zero rows for unreadable images")
    p.add_argument("--batch-size", type=at_least(1), default=256)
    p.add_argument("--workers", type=at_least(0), default=2)
    p.set_defaults(func=_predict)

    p = sub.add_parser("evaluate", help="metrics of an exported model on a labelled dataset")
    p.add_argument("model_dir")
    p.add_argument("data_root", nargs="?", help="default: the data the model was trained on")
    p.add_argument("--split", choices=["val", "all"], default="val",
                   help="val: the run's validation split (same fraction and seed); all: every image")
    p.add_argument("--format", choices=list(FORMATS))
    p.add_argument("--json", help="write the summary and per-label figures here")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("analyze", help="figures of a run: data, confusion matrices, errors, PR curves, curves")
    p.add_argument("run_dir")
    p.add_argument("--data", help="data root (default: the run's)")
    p.add_argument("--examples", type=at_least(0), default=8, help="misclassified examples per label and kind")
    p.set_defaults(func=_analyze)

    p = sub.add_parser("export", help="export a model folder to ONNX (needs the onnx extra: pip install 'mlic[onnx]')")
    p.add_argument("model_dir", help="an exported model, e.g. runs/vit/model")
    p.add_argument("--onnx", required=True, metavar="FILE", help="the ONNX file to write")
    p.add_argument("--opset", type=at_least(1), default=18)
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip running the exported model in onnxruntime against torch")
    p.set_defaults(func=_export)

    p = sub.add_parser("report", help="RUN_DIR/report.html: config, curves, per-label table and figures on one page")
    p.add_argument("run_dir")
    p.add_argument("--data", help="data root (default: the run's)")
    p.set_defaults(func=_report)


if __name__ == "__main__":
    entry()
