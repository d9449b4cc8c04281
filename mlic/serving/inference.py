"""After training: `mlic predict` (the course's results file, through `mlic.load_model`) and `mlic evaluate`
(metrics of §5 with per-label figures, on one process or many), both from an exported model folder and
through the training's eval preprocessing."""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from mlic.config import Config, config_from_dict
from mlic.data.cache import Square, decode_square
from mlic.data.datasets import IMAGE_SUFFIXES, DecodeFiles, MultilabelImages, Transformed, decode_problems
from mlic.data.decode import DecodeSettings
from mlic.data.pipeline import PassThrough, load_split
from mlic.data.registry import load_dataset
from mlic.data.transforms import DeviceTransform, per_image_evaluating
from mlic.errors import DataError, MlicError, some
from mlic.metrics import compute_metrics, per_label_metrics, tuned_metrics
from mlic.models.export import INFERENCE, load_exported

RESULT_NAME = re.compile(r"^im([0-9]+)\.[a-z]+$", re.IGNORECASE)  # a row of the course's results file: im<N>.<ext>


class DecodedImages(torch.utils.data.Dataset):
    """Every row of `dataset` decoded as the training cache does (uint8 squares, `mlic.data.cache.Square`):
    evaluation sees what training saw. Sample `row` = (image, float target, row); a split is a `Subset` of it."""

    def __init__(self, dataset: MultilabelImages, size: Square):
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, row: int):
        row = int(row)
        return torch.from_numpy(decode_square(self.dataset, row, self.size)), self.dataset.labels.target_row(row), row


def _eval_inputs(dataset: MultilabelImages, rows: np.ndarray, cfg: Config, meta: dict, batch_size: int, workers: int):
    """(loader over `rows` of `dataset`, transform) reproducing the run's evaluation preprocessing."""
    pre = meta["preprocess"]
    if meta.get("cached", True):
        source = DecodedImages(dataset, Square.of_data(cfg.data))
        transform = DeviceTransform.evaluating(pre, cfg.data.resize)
    else:
        source = Transformed(dataset, per_image_evaluating(pre, cfg.data))
        transform = PassThrough(channels_last=False)  # the workers already resized and normalised
    return DataLoader(Subset(source, rows), batch_size=batch_size, num_workers=workers), transform


def image_files(folder: Path) -> tuple[Path, list[Path]]:
    """(the folder, its images): im<N> names in number order first, then the others by name. A ROOT holding
    images/ means images/."""
    if (folder / "images").is_dir():
        folder = folder / "images"
    if not folder.is_dir():
        raise MlicError(f"{folder}: folder not found")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise MlicError(f"{folder}: no images")
    files.sort(key=lambda p: (result_number(p.name) is None, result_number(p.name) or 0, p.name))
    return folder, files


def folder_images(folder: Path, settings: DecodeSettings) -> MultilabelImages:
    """A folder of images to predict (or ROOT with images/), in `image_files` order, decoded with the training
    run's `settings`."""
    folder, files = image_files(folder)
    return MultilabelImages([], np.zeros((len(files), 0), np.uint8), [p.name for p in files],
                            DecodeFiles(files, settings), str(folder), "predict")


def result_number(name: str) -> int | None:
    """N of an image named im<N>.<ext> (the course's numbering), else None."""
    m = RESULT_NAME.match(name)
    return int(m.group(1)) if m else None


def numbering_problems(names: list[str]) -> tuple[list[str], list[str]]:
    """(why the unnamed rows of a results file could not say which image each is, the missing numbers between
    the first and the last as ranges): rows follow image numbers, so every image needs one number of its own;
    a gap only shifts the rows after it."""
    unnumbered = [n for n in names if result_number(n) is None]
    by_number: dict[int, list[str]] = {}
    for name in names:
        if (number := result_number(name)) is not None:
            by_number.setdefault(number, []).append(name)
    shared = [f"{some(group, first=3, sep=' and ')} ({number})"
              for number, group in sorted(by_number.items()) if len(group) > 1]
    problems = []
    if unnumbered:
        problems.append(f"{len(unnumbered)} not named im<N>.<ext>: {some(unnumbered)}")
    if shared:
        problems.append(f"{len(shared)} image number(s) held by several files: {some(shared)}")
    numbers, gaps = sorted(by_number), []
    for lo, hi in zip(numbers, numbers[1:]):
        if hi > lo + 1:
            gaps.append(f"im{lo + 1}" if hi == lo + 2 else f"im{lo + 1}-im{hi - 1}")
    return problems, gaps


def check_numbering(folder: Path, names: list[str], results: str, explicit: bool, probs: bool) -> bool:
    """Whether to write `results` (unnamed 0/1 rows read as im1, im2, ... in number order). A folder whose names
    cannot say which row is which image is refused when `results` was asked for (`explicit`) or nothing else
    would be written; beside --probs the results file is left out with a warning. Gaps are a warning."""
    problems, gaps = numbering_problems(names)
    if problems:
        why = (f"{folder}: the rows of {results} are images in im<N> number order, but {some(problems, sep='; ')}; "
               "rename them to im<N>.jpg, one number each")
        if probs and not explicit:
            print(f"warning: {why}; {results} not written (the --probs file names the image of every row)",
                  file=sys.stderr)
            return False
        hint = "" if explicit else f" ({results} is written when --out is not given)"
        raise DataError(f"{why}, or leave out --out and write --probs FILE, which names the image of every row{hint}")
    if gaps:
        print(f"warning: {folder}: no image for {some(gaps)} between {names[0]} and {names[-1]}: {results} has a row "
              "per image present, so a reader counting rows from the first number misplaces those after a gap",
              file=sys.stderr)
    return True


def infer(model, loader, transform) -> np.ndarray:
    """Probabilities in dataset order, on 1 process or under `accelerate launch` (each rank a share;
    mixed precision as launched), through the engine's gather-once `predict`."""
    from accelerate import Accelerator

    from mlic.training.evaluation import predict_logits

    accelerator = Accelerator()
    model = accelerator.prepare_model(model, evaluation_mode=True)
    loader = accelerator.prepare_data_loader(loader)
    logits, _, index = predict_logits(model, loader, transform.to(accelerator.device), accelerator)
    if len(index) != len(loader.dataset):
        raise MlicError(f"inference covered {len(index)} of {len(loader.dataset)} images")
    return torch.sigmoid(logits).numpy()


def predict_command(model_dir: str, images: str, out: str | None, probs_path: str | None, allow_bad: bool,
                    batch_size: int, workers: int) -> int:
    """`mlic predict`: `mlic.load_model` on a folder, in image-number order, written as the course asks.
    One process on one device (the GPU when there is one); under a multi-process launch rank 0 does it."""
    if os.environ.get("RANK", "0") != "0":
        return 0
    from mlic.serving.predictor import load_model

    results = out or "results.txt"  # the course's file, as before; checked before the model loads
    folder, files = image_files(Path(images))
    if not check_numbering(folder, [p.name for p in files], results, explicit=out is not None, probs=bool(probs_path)):
        results = None
    predictor = load_model(model_dir, batch_size=batch_size, workers=workers)
    dataset = folder_images(Path(images), predictor.settings)  # decoded as training did
    problems = {p.row: p.text for p in decode_problems(dataset, workers)}
    for problem in problems.values():
        print(problem, file=sys.stderr)
    if problems and not allow_bad:
        print(f"error: {len(problems)} unreadable image(s); nothing written (--allow-bad writes all-zero rows "
              "for them)", file=sys.stderr)
        return 1
    good = [i for i in range(len(dataset)) if i not in problems]
    probs = np.zeros((len(dataset), len(predictor.label_names)), dtype=np.float32)
    if good:
        probs[good] = predictor.predict([dataset.decode.paths[i] for i in good]).probabilities
    predicted = (probs >= predictor.thresholds).astype(int)
    predicted[list(problems)] = 0
    if results:
        Path(results).write_text("".join(" ".join(map(str, row)) + "\n" for row in predicted))
    if probs_path:
        with open(probs_path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file", *predictor.label_names])
            for name, row in zip(dataset.names, probs):
                writer.writerow([name, *(f"{p:.6f}" for p in row)])
    print(f"{len(dataset)} images, {len(problems)} unreadable; labels: {some(predictor.label_names, first=20, sep=' ')}",
          file=sys.stderr)
    return 0


def evaluate_model(model_dir: str, data_root: str | None, split: str = "val", batch_size: int = 256, workers: int = 2,
                   fmt: str | None = None):
    """Metrics of the exported model on a dataset: (summary dict, per-label rows, probs, targets, dataset,
    rows), where probs and targets (the positives, 0/1) are those of `rows` of the full `dataset`, in that
    order. Under partial labels the metrics count the known entries only.

    `split="val"` re-derives the run's validation split (same fraction and seed), so the figures match
    the run's own `val` line; `all` scores every image (less the unreadable ones under data.skip_bad)."""
    model, meta = load_exported(model_dir, INFERENCE)
    cfg = config_from_dict(meta["config"])
    if data_root is not None:
        cfg.data.root = data_root
    if fmt is not None:
        cfg.data.format = fmt
    if split == "val":
        dataset, _, rows = load_split(cfg)
    else:
        dataset, rows = load_dataset(cfg.data, workers=max(2, workers))
    if dataset.label_names != meta["label_names"]:
        theirs, ours = dataset.label_names, meta["label_names"]
        raise MlicError(f"{cfg.data.root}: its labels differ from the model's: the data has {len(theirs)} "
                        f"({some(theirs)}), the model {len(ours)} ({some(ours)})"
                        + ("; the same names in another order" if sorted(theirs) == sorted(ours) else ""))
    loader, transform = _eval_inputs(dataset, rows, cfg, meta, batch_size, workers)
    probs = infer(model, loader, transform)
    targets, known = dataset.labels.dense(rows), dataset.labels.known_dense(rows)  # known: None unless partial
    thresholds = np.asarray(meta["thresholds"])
    summary = compute_metrics(targets, probs, known=known)
    summary.update(tuned_metrics(targets, probs, thresholds, known=known))
    summary["images"] = len(rows)
    per_label = per_label_metrics(targets, probs, meta["label_names"], thresholds, known=known)
    return summary, per_label, probs, targets, dataset, rows


def evaluate_command(model_dir: str, data_root: str | None, split: str, json_out: str | None, fmt: str | None) -> int:
    """Under several processes every rank waits for the main one's output, then the process group is closed: a
    rank that exited with gloo's group alive while the main process still wrote aborted at exit (`terminate
    called without an active exception`, twice in one suite run)."""
    from accelerate.state import PartialState

    summary, per_label, *_ = evaluate_model(model_dir, data_root, split, fmt=fmt)
    state = PartialState()
    try:
        if state.is_main_process:
            _print_evaluation(summary, per_label, json_out)
    finally:
        state.wait_for_everyone()
        state.destroy_process_group()
    return 0


def _print_evaluation(summary: dict, per_label: list[dict], json_out: str | None) -> None:
    print(f"{'label':10s} {'prec':>6s} {'recall':>6s} {'f1':>6s} {'AP':>6s} {'support':>7s}  (tuned thresholds)")
    for r in per_label:
        print(f"{r['label']:10s} {r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f} {r['AP']:6.3f} {r['support']:7d}")
    print("  ".join(f"{k} {summary[k]:.4f}" for k in ("accuracy", "f1_micro", "f1_macro", "mAP", "f1_macro_tuned")))
    if json_out:
        Path(json_out).write_text(json.dumps({"summary": summary, "per_label": per_label}, indent=2))
