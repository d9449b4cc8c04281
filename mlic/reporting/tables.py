"""`mlic tables N`: the experiment grid of the report's Table N, run (or submitted) and rendered in the
report's layout, each cell "ours (report)"."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mlic.config import CONFIGS
from mlic.errors import MlicError

# A model name -> the training entry (train/<entry>.py, `mlic train <entry>`) whose family it belongs to.
# slurm/tables.sh asks for it through `python -m mlic.reporting.tables entry-for CONFIG`.
ENTRY_FOR_MODEL = {"resnet50": "resnet152", "densenet121": "densenet161"}
ROWS_FULL = [("Accuracy", "accuracy"), ("Loss", "loss"), ("Micro F1 score", "f1_micro"),
             ("Micro Precision", "precision_micro"), ("Micro Recall", "recall_micro"), ("Macro F1 score", "f1_macro"),
             ("Macro Precision", "precision_macro"), ("Macro Recall", "recall_macro")]
# Tiny settings for `--scale demo`: the demo corpus, small images, no downloads, two epochs.
DEMO_OVERRIDES = ["data.root=null", "data.demo_images=400", "data.image_size=32", "data.num_workers=0",
                  "model.pretrained=false", "train.epochs=2", "train.batch_size=16", "train.eval_batch_size=64",
                  "run.progress=false"]


@dataclass
class Table:
    key: str  # folder under configs/tables
    title: str
    columns: dict[str, str]  # column label -> run name (configs/tables/<key>/<run>.yaml)
    rows: list[tuple[str, str]]  # (row label, metric key)
    splits: tuple[str, ...] = ("train", "val")
    report: dict[tuple[str, str, str], float | str] = field(default_factory=dict)  # (row, split, column): the report's

    @property
    def number(self) -> str:
        """How commands name it: `mlic tables 2`, `slurm/tables.sh ablations`."""
        return self.key.removeprefix("table")


def _read_table(path: Path) -> Table:
    """A table as configs/tables/<key>/table.json describes it, beside the configs of its runs (JSON: the runs
    are that folder's *.yaml, which slurm/tables.sh and the tests take as experiment configs)."""
    doc = json.loads(path.read_text())
    report = {(row, split, column): value for split, rows in doc["report"].items()
              for row, cells in rows.items() for column, value in cells.items()}
    return Table(path.parent.name, doc["title"], doc["columns"], list(doc["rows"].items()), tuple(doc["splits"]), report)


def _read_tables() -> dict[str, Table]:
    """Every table by how commands name it: the report's 1-6 first, then the others by name."""
    paths = sorted((CONFIGS / "tables").glob("*/table.json"),
                   key=lambda p: (not p.parent.name.startswith("table"), p.parent.name))
    return {table.number: table for table in map(_read_table, paths)}


TABLES: dict[str, Table] = _read_tables()


def get_table(number: str) -> Table:
    key = str(number).removeprefix("table")
    if key not in TABLES:
        raise MlicError(f"no table {number!r}; the report has tables 1-6, and there are `ablations` and `modern`")
    return TABLES[key]


def tables_root(scale: str, runs: str | Path = "runs") -> Path:
    """The folder of every table's run folders at this scale (slurm/tables.sh: MLIC_TABLE_RUNS)."""
    return Path(runs) / ("tables-demo" if scale == "demo" else "tables")


def scale_overrides(scale: str) -> list[str]:
    """The overrides every run of a table gets at this scale."""
    return DEMO_OVERRIDES if scale == "demo" else []


def run_dir(table: Table, run: str, scale: str, runs: str | Path = "runs") -> Path:
    """Where a run writes, relative to the current folder (as every run folder is)."""
    return tables_root(scale, runs) / table.key / run


def train_entry(config: str | Path) -> str:
    """The training entry that trains this config's model (`mlic train <entry>`, train/<entry>.py)."""
    from mlic.config import load_config

    name = load_config(config).model.name
    return ENTRY_FOR_MODEL.get(name, name)


def _shown(path: Path) -> str:
    """A shipped config as the command shows it: relative when under the current folder (a checkout)."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def commands(table: Table, scale: str, extra: list[str], runs: str | Path = "runs") -> list[list[str]]:
    """One command per run, in column order; they train through the installed package, from any folder."""
    out = []
    for run in table.columns.values():
        config = CONFIGS / "tables" / table.key / f"{run}.yaml"
        overrides = [*scale_overrides(scale), f"run.output_dir={run_dir(table, run, scale, runs)}", *extra]
        launcher = [sys.executable, "-m"] if scale == "demo" else ["accelerate", "launch", "-m"]
        out.append([*launcher, "mlic.cli", "train", train_entry(config), "--config", _shown(config), *overrides])
    return out


def collect(table: Table, scale: str, runs: str | Path = "runs") -> str:
    """The markdown table; every number comes from a run folder (the exported, best epoch)."""
    from mlic.models.export import META  # the model stack: only when a table is read

    header_cols = [(s, c) for s in table.splits for c in table.columns]
    split_name = {"train": "Training", "val": "Validation"}
    lines = [f"**{table.title}** (cells: ours (report))", "",
             "| Metric | " + " | ".join(f"{split_name[s]}: {c}" for s, c in header_cols) + " |",
             "|---" * (len(header_cols) + 1) + "|"]
    metrics = {}
    for column, run in table.columns.items():
        folder = run_dir(table, run, scale, runs)
        meta_path, lines_path = folder / "model" / META, folder / "metrics.jsonl"
        if not meta_path.is_file() or not lines_path.is_file():
            raise MlicError(f"{folder}: no finished run (run `mlic tables {table.number} --scale {scale}` first)")
        meta = json.loads(meta_path.read_text())
        # the exported model's own line: with an EMA, "val" is the split whose weights were exported
        val_split = "val_ema" if meta.get("weights") == "ema" else "val"
        for line in map(json.loads, lines_path.read_text().splitlines()):
            if line["epoch"] == meta["epoch"] and line["split"] in ("train", val_split):
                metrics[("val" if line["split"] == val_split else line["split"], column)] = line
    for label, key in table.rows:
        cells = []
        for split, column in header_cols:
            ours = metrics[(split, column)][key]
            theirs = table.report.get((label, split, column))
            theirs = "" if theirs is None else f" ({theirs})"
            cells.append(f"{ours:.2f}{theirs}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def submit(table: Table, scale: str, extra: list[str], runs: str | Path, sbatch_args: list[str]) -> int:
    """The table's runs as one SLURM job array of slurm/tables.sh; `--collect` renders it once they are done."""
    if not shutil.which("sbatch"):
        raise MlicError("--submit needs SLURM's sbatch on PATH; without it, leave out --submit to run here")
    if not Path("slurm/tables.sh").is_file():
        raise MlicError(f"sbatch needs slurm/tables.sh of an mlic checkout; not in {Path.cwd()}: run from the checkout")
    overrides = [*scale_overrides(scale), *extra]
    cmd = ["sbatch", "--parsable", f"--array=0-{len(table.columns) - 1}", *sbatch_args, "slurm/tables.sh",
           table.number, *overrides]
    print(shlex.join(cmd), flush=True)
    # absolute: the job runs from the checkout (MLIC_REPO), --collect reads from here
    env = {**os.environ, "MLIC_TABLE_RUNS": str(tables_root(scale, runs).resolve())}
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if done.returncode == 0:
        job = done.stdout.strip().split(";")[0]
        print(f"submitted job array {job}; when it is done: mlic tables {table.number} "
              f"--scale {scale} --collect" + ("" if str(runs) == "runs" else f" --runs {runs}"))
    return done.returncode


def tables_command(number: str, scale: str, dry_run: bool, collect_only: bool, extra: list[str],
                   runs: str = "runs", submit_job: bool = False, sbatch_args: list[str] | None = None) -> int:
    table = get_table(number)
    cmds = commands(table, scale, extra, runs)
    if dry_run:
        print(f"# {table.title}: {len(cmds)} runs ({scale} scale)")
        for cmd in cmds:
            print(shlex.join(cmd))
        print(f"# or on SLURM: mlic tables {table.number} --scale {scale} --submit "
              f"(sbatch --array=0-{len(cmds) - 1} slurm/tables.sh {table.number})")
        return 0
    if sbatch_args and not submit_job:
        raise MlicError("--sbatch options are for --submit; add --submit, or leave them out to run here")
    if submit_job:
        return submit(table, scale, extra, runs, sbatch_args or [])
    if not collect_only:
        for cmd in cmds:
            print(shlex.join(cmd), flush=True)
            done = subprocess.run(cmd)
            if done.returncode != 0:
                raise MlicError(f"run failed ({done.returncode}): {shlex.join(cmd)}")
    print(collect(table, scale, runs))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m mlic.reporting.tables entry-for CONFIG`: the training entry of a config's model (for slurm/tables.sh)."""
    parser = argparse.ArgumentParser(prog="python -m mlic.reporting.tables")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("entry-for", help="print the training entry (train/<entry>.py) of a config's model").add_argument("config")
    args = parser.parse_args(argv)
    try:
        print(train_entry(args.config))
    except MlicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
