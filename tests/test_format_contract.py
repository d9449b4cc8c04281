"""The contract every registered dataset format keeps (mlic.data.formats), checked on each built-in one and on a
toy format that this file alone defines and registers, as docs/EXTENDING.md tells a new format to: its example
parses to exactly the labels it wrote, check-data agrees with the loader, a missing image is a problem naming
it (in both), the config takes its options, and a fit runs on it."""

import json
from pathlib import Path

import numpy as np
import pytest

from mlic.cli import main
from mlic.config import load_config
from mlic.data.datasets import (
    DecodeFiles,
    Format,
    MultilabelImages,
    Option,
    Parsed,
    Problem,
    example_rows,
    file_fingerprint,
    file_problems,
    save_jpeg,
)
from mlic.data.formats import FORMATS, register
from mlic.data.registry import check_command, load_dataset, parse
from mlic.errors import ConfigError
from mlic.labels import LabelMatrix
from mlic.training.engine import fit
from tests.helpers import REPO


# ---- the toy format: ROOT/labels.jsonl, one {"file": ..., "<tags_key>": [...]} per line
def parse_jsonl(root, split, labels, settings, *, tags_key: str) -> Parsed:
    manifest = Path(root) / f"{split or 'labels'}.jsonl"
    if not manifest.is_file():
        return None, [Problem(f"{manifest}: not found")]
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    names = sorted({tag for row in rows for tag in row[tags_key]})
    problems = [Problem(f"{manifest}: unknown label {name!r}") for name in names if labels is not None and name not in labels]
    col = {name: c for c, name in enumerate(names)}
    target = LabelMatrix.from_lists([[col[t] for t in row[tags_key]] for row in rows], len(names))
    paths = [Path(root) / row["file"] for row in rows]
    problems += file_problems(paths, [row["file"] for row in rows])
    dataset = MultilabelImages(names, target, [row["file"] for row in rows], DecodeFiles(paths, settings),
                               str(manifest), file_fingerprint([manifest, *paths], f"jsonl|{tags_key}|{settings.key}"))
    return dataset, problems


def jsonl_example(root: Path) -> dict[str, set[str]]:
    lines, expected = [], {}
    for k, (image, positives) in enumerate(example_rows(["sun", "sea", "sand"])):
        save_jpeg(image, root / f"{k}.jpg")
        lines.append(json.dumps({"file": f"{k}.jpg", "tags": positives}))
        expected[f"{k}.jpg"] = set(positives)
    (root / "labels.jsonl").write_text("\n".join(lines) + "\n")
    return expected


TOY = Format("jsonl", parse_jsonl, "ROOT/labels.jsonl: one {\"file\": ..., \"tags\": [...]} per line", jsonl_example,
             options=(Option("tags_key", "tags", "the key of each line's label list"),))
NAMES = [*FORMATS, TOY.name]  # the registered formats, and the toy


@pytest.fixture(autouse=True)
def toy_registered():
    register(TOY)  # a second register of the same object is a no-op
    yield
    FORMATS.pop(TOY.name)


@pytest.fixture
def example(request, tmp_path):
    fmt = FORMATS[request.param]
    return fmt, tmp_path / fmt.name, fmt.example(tmp_path / fmt.name)


def _positives(dataset) -> dict[str, set[str]]:
    dense = dataset.labels.dense()
    return {name: {dataset.label_names[c] for c in np.flatnonzero(dense[i])} for i, name in enumerate(dataset.names)}


@pytest.mark.parametrize("example", NAMES, indirect=True)
def test_the_example_parses_to_exactly_its_labels_and_check_data_agrees(example, capsys):
    fmt, root, expected = example
    dataset, problems = parse(fmt.name, root)
    assert [p.text for p in problems] == []
    assert _positives(dataset) == expected
    assert dataset.read(0).mode == "RGB" and dataset.read(0).size == (32, 32)
    assert main(["check-data", "--format", fmt.name, str(root)]) == 0
    assert "0 problem(s), 0 warning(s)" in capsys.readouterr().err


FILE_BASED = [name for name in NAMES if name != "hf"]  # hf holds its images in the dataset's own arrow files


@pytest.mark.parametrize("example", FILE_BASED, indirect=True)
def test_an_unreadable_image_is_one_problem_that_check_data_names_and_skip_bad_leaves_out(example, capsys):
    fmt, root, expected = example
    broken = parse(fmt.name, root)[0].decode.paths[3]
    Path(broken).write_bytes(b"not an image")
    assert main(["check-data", "--format", fmt.name, str(root)]) == 1
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 1 and Path(broken).name in listed[0]
    cfg = load_config(None, [f"data.format={fmt.name}", f"data.root={root}", "data.skip_bad=true"]).data
    dataset, rows = load_dataset(cfg)
    assert len(rows) == len(expected) - 1 and 3 not in rows


def test_the_toy_formats_option_is_a_config_key_and_a_check_data_flag(tmp_path, capsys):
    root = tmp_path / "jsonl"
    jsonl_example(root)
    renamed = [json.dumps({"file": row["file"], "labels": row["tags"]})
               for row in map(json.loads, (root / "labels.jsonl").read_text().splitlines())]
    (root / "labels.jsonl").write_text("\n".join(renamed) + "\n")
    cfg = load_config(None, ["data.format=jsonl", f"data.root={root}", "data.options.tags_key=labels"])
    assert load_dataset(cfg.data)[0].label_names == ["sand", "sea", "sun"]
    assert check_command("jsonl", root, tags_key="labels") == f"mlic check-data --format jsonl --tags-key labels {root}"
    assert main(["check-data", "--format", "jsonl", "--tags-key", "labels", str(root)]) == 0
    csv_root = tmp_path / "csv"
    FORMATS["csv"].example(csv_root)
    assert main(["check-data", "--format", "csv", "--tags-key", "labels", str(csv_root)]) == 0  # said, not used
    assert "warning: --tags-key: not an option of --format csv, ignored" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"'data.options.tags_key': not an option of data.format=helsinki"):
        load_config(None, ["data.options.tags_key=labels"])
    cfg = load_config(None, ["data.format=jsonl", "data.options.tags_key=labels", "data.format=helsinki",
                             "data.options={}"])  # an empty mapping clears what an earlier source set
    assert cfg.data.options == {}
    with pytest.raises(ConfigError, match=r"'data.format': 'nope' is not one of helsinki, csv, hf, coco, voc, openimages, jsonl"):
        load_config(None, ["data.format=nope"])


@pytest.mark.slow
@pytest.mark.parametrize("example", NAMES, indirect=True)
def test_a_fit_runs_on_every_format(example, tmp_path):
    fmt, root, expected = example
    last = fit(load_config(REPO / "configs/demo.yaml", [
        f"data.format={fmt.name}", f"data.root={root}", "data.image_size=32", "data.cache_size=32", "data.val_fraction=0.25",
        "train.epochs=1", "train.batch_size=8", "train.eval_batch_size=8", f"run.output_dir={tmp_path / 'run'}"]))
    assert 4 <= last["val"]["images"] <= 8 and np.isfinite(last["train"]["loss"])  # a quarter of 24, stratified
    exported = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert set(exported["label_names"]) >= set().union(*expected.values())


def test_register_refuses_an_option_that_would_shadow_a_flag_or_disagree_with_another_format():
    shadow = Format("shadow", parse_jsonl, "-", jsonl_example, options=(Option("workers", "4", "-"),))
    with pytest.raises(ValueError, match="check-data's own flags"):
        register(shadow)
    other = Format("other", parse_jsonl, "-", jsonl_example, options=(Option("tags_key", "tags", "-", ("tags",)),))
    with pytest.raises(ValueError, match="declared otherwise by another format"):
        register(other)
    assert "shadow" not in FORMATS and "other" not in FORMATS


def test_the_hint_names_the_split_hf_reads():
    """data.split wins over data.hf_split: the check-data command a problem names checks that same split."""
    assert check_command("hf", "/d", "train", hf_split="validation") == "mlic check-data --format hf /d"
    assert check_command("hf", "/d", None, hf_split="validation") == "mlic check-data --format hf --hf-split validation /d"
    assert check_command("hf", "/d", "test", hf_split="validation") == "mlic check-data --format hf --split test /d"
