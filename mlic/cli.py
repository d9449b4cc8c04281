"""The `mlic` command and the shared body of `train/*.py`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlic.errors import MlicError

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


def train_main(model: str, argv: list[str] | None = None) -> int:
    """`train/<model>.py [--config FILE] [key=value ...]`: configs/<model>.yaml unless --config is given."""
    parser = argparse.ArgumentParser(prog=f"train/{model}.py", description=f"Train {model} (Accelerate-aware).")
    parser.add_argument("--config", help=f"experiment YAML (default: configs/{model}.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=3e-4 train.epochs=2")
    args = parser.parse_args(argv)
    try:
        from mlic.config import load_config

        cfg = load_config(args.config or CONFIGS / f"{model}.yaml", args.overrides)
        from mlic.engine import fit

        fit(cfg)
    except MlicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _demo_data(args) -> int:
    from mlic.data.demo import write_demo_data

    out = write_demo_data(args.dir, args.images, args.seed)
    print(f"wrote {args.images} images and 14 annotation files to {out}")
    return 0


def _check_data(args) -> int:
    from mlic.data.check import check_data

    labels = set(args.labels.split(",")) if args.labels else None
    problems = check_data(args.root, args.format, labels, args.workers)
    for line in problems:
        print(line)
    print(f"{len(problems)} problem(s) in {args.root}", file=sys.stderr)
    return 1 if problems else 0


def _train(args) -> int:
    return train_main(args.model, ([*(["--config", args.config] if args.config else [])] + args.overrides))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlic", description="Multi-label image classification.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="write the synthetic demo corpus (helsinki layout)")
    p.add_argument("dir")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo_data)

    p = sub.add_parser("check-data", help="validate a dataset without training; exit 1 on any problem")
    p.add_argument("root")
    p.add_argument("--format", choices=["helsinki", "csv", "hf"], default="helsinki")
    p.add_argument("--labels", help="comma-separated known label names: others are reported")
    p.add_argument("--workers", type=int, default=4)
    p.set_defaults(func=_check_data)

    p = sub.add_parser("train", help="train a model in this process (use `accelerate launch train/X.py` for many)")
    p.add_argument("model", choices=["cnn", "resnet152", "densenet161", "vit"])
    p.add_argument("--config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_train)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MlicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
