import json
import re

import pytest

from mlic.cli import main
from mlic.tables import TABLES, commands, get_table
from tests.conftest import REPO


@pytest.mark.parametrize("number", list(TABLES))
def test_dry_run_lists_every_run_with_its_exact_command(number, capsys):
    assert main(["tables", number, "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    table = get_table(number)
    launches = [line for line in out if line.startswith("accelerate launch")]
    assert len(launches) == len(table.columns)
    for line, run in zip(launches, table.columns.values()):
        assert f"--config configs/tables/{table.key}/{run}.yaml" in line
        assert line.endswith(f"run.output_dir=runs/tables/{table.key}/{run}")
        assert (REPO / "configs" / "tables" / table.key / f"{run}.yaml").is_file()
    assert out[-1] == f"# or on SLURM: sbatch --array=0-{len(table.columns) - 1} slurm/tables.sh {number}"


def test_every_report_cell_has_a_run_and_a_row():
    for table in TABLES.values():
        for row, split, column in table.report:
            assert row in dict(table.rows) and split in table.splits and column in table.columns


@pytest.mark.slow
def test_table_2_at_demo_scale_end_to_end(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["tables", "2", "--scale", "demo", "--runs", str(runs), "--set", "train.epochs=1",
                 "--set", "data.demo_images=300"]) == 0
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
