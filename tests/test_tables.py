import json
import re
import subprocess
import sys

import pytest

from mlic.cli import main
from mlic.reporting.tables import TABLES, commands, get_table, train_entry
from tests.helpers import REPO


@pytest.mark.parametrize("number", list(TABLES))
def test_dry_run_lists_every_run_with_its_exact_command(number, capsys):
    assert main(["tables", number, "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    table = get_table(number)
    launches = [line for line in out if line.startswith("accelerate launch")]
    assert len(launches) == len(table.columns)
    for line, run in zip(launches, table.columns.values()):
        config = REPO / "configs" / "tables" / table.key / f"{run}.yaml"
        # through the installed package (no train/*.py needed), config shown relative to this checkout
        assert line.startswith(f"accelerate launch -m mlic.cli train {train_entry(config)} "
                               f"--config configs/tables/{table.key}/{run}.yaml ")
        assert line.endswith(f"run.output_dir=runs/tables/{table.key}/{run}")
        assert (REPO / "configs" / "tables" / table.key / f"{run}.yaml").is_file()
    assert out[-1] == (f"# or on SLURM: mlic tables {number} --scale full --submit "
                       f"(sbatch --array=0-{len(table.columns) - 1} slurm/tables.sh {number})")


def test_one_model_to_entry_map_for_mlic_and_slurm(tmp_path):
    config = tmp_path / "resnet50.yaml"
    config.write_text("model:\n  name: resnet50\n")
    assert train_entry(config) == "resnet152"  # a ResNet-50 run trains through train/resnet152.py
    done = subprocess.run([sys.executable, "-m", "mlic.reporting.tables", "entry-for", str(config)], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "resnet152\n"), done.stderr
    assert "case" not in (REPO / "slurm" / "tables.sh").read_text()  # slurm/tables.sh asks mlic.reporting.tables, keeps no copy


def test_every_report_cell_has_a_run_and_a_row():
    for table in TABLES.values():
        for row, split, column in table.report:
            assert row in dict(table.rows) and split in table.splits and column in table.columns


@pytest.mark.slow
def test_table_2_at_demo_scale_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # any folder: the runs go to ./runs, the configs come from the package
    runs = tmp_path / "runs"
    assert main(["tables", "2", "--scale", "demo", "--set", "train.epochs=1", "--set", "data.demo_images=300"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert lines[0] == "| Metric | Validation: Unbalanced | Validation: Balanced | Validation: Weighted |"
    assert len(lines) == 2 + 8 and all(line.count("|") == 5 for line in lines)  # header, rule, 8 metric rows
    f1_row = next(line for line in lines if line.startswith("| Macro F1 score"))
    cells = [c.strip() for c in f1_row.strip("|").split("|")][1:]
    assert [re.fullmatch(r"(\d\.\d\d) \((.*)\)", c).group(2) for c in cells] == ["0.04", "0.01", "0.49"]
    for cell, run in zip(cells, ["unbalanced", "balanced", "weighted"]):  # every number from its run folder
        val = [json.loads(x) for x in (runs / "tables-demo" / "table2" / run / "metrics.jsonl").read_text().splitlines()
               if '"val"' in x][-1]
        assert cell.startswith(f"{val['f1_macro']:.2f}")
    cmds = commands(get_table("2"), "demo", [], runs)
    assert all("data.root=null" in c and "model.pretrained=false" in c for c in cmds)


def test_modern_table_reads_the_line_of_the_exported_weights(tmp_path):
    """With an EMA, the exported model may be the average: its "val_ema" line is the table's val cell."""
    from mlic.models.export import META
    from mlic.reporting.tables import collect, run_dir

    table = get_table("modern")
    for run, weights in (("report", "trained"), ("modern", "ema")):
        folder = run_dir(table, run, "demo", tmp_path)
        (folder / "model").mkdir(parents=True)
        (folder / "model" / META).write_text(json.dumps({"epoch": 2, "weights": weights}))
        lines = [{"epoch": e, "split": s, **{key: 0.1 * e + (0.05 if s == "val_ema" else 0.0) for _, key in table.rows}}
                 for e in (1, 2, 3) for s in ("train", "val", "val_ema")]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows = {line.split("|")[1].strip(): line for line in collect(table, "demo", tmp_path).splitlines() if line.startswith("| ")}
    assert rows["Macro F1 score"].split("|")[2:4] == [" 0.20 (0.65) ", " 0.25 "]  # epoch 2: raw val, then its EMA
