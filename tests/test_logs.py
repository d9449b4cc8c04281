"""The run's messages through `logging` (mlic.logs): RUN/train.log beside metrics.jsonl, `run.log_level` on the
console only, the streams and texts users read kept, and a log file that cannot be written never stops a run."""

import logging

from mlic.cli import main
from mlic.logs import log
from tests.helpers import REPO

TINY = ["data.demo_images=200", "train.batch_size=32", "train.epochs=2"]


def _train(run, *overrides):
    return main(["train", "cnn", "--config", str(REPO / "configs" / "demo.yaml"), *TINY, f"run.output_dir={run}",
                 *overrides])


def test_a_run_writes_train_log_and_log_level_warning_quiets_only_the_console(tmp_path, capsys):
    assert _train(tmp_path / "quiet", "run.log_level=warning") == 0
    out, err = capsys.readouterr()
    assert "epoch 1/2" not in out and "epoch 2/2" not in out and "building the image cache" not in err
    lines = (tmp_path / "quiet" / "train.log").read_text().splitlines()
    epochs = [x for x in lines if "epoch" in x and "train loss" in x]
    assert [x.split(" INFO ")[1].split("  ")[0] for x in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert any(" INFO building the image cache" in x for x in lines)

    assert _train(tmp_path / "loud", "train.epochs=1") == 0  # the default level again: a run set it for its span
    out, err = capsys.readouterr()
    assert out.count("epoch 1/1  train loss") == 1  # stdout, as its print was
    log.warning("warning: after the run")
    assert capsys.readouterr().err == "warning: after the run\n"  # text as given, on stderr


def test_a_resumed_run_appends_to_its_log(tmp_path, capsys):
    assert _train(tmp_path / "run", "train.epochs=1") == 0
    assert _train(tmp_path / "run") == 0
    assert "resumed from" in capsys.readouterr().out
    text = (tmp_path / "run" / "train.log").read_text()
    assert text.count("epoch 1/1") == 1 and "resumed from" in text and text.count("epoch 2/2") == 1


def test_a_log_file_that_cannot_be_written_is_one_warning_and_the_run_goes_on(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").mkdir()  # a folder where the file goes: every open fails, as on a full disk
    assert _train(run, "train.epochs=1") == 0
    out, err = capsys.readouterr()
    assert "epoch 1/1" in out and "Traceback" not in err
    assert err.count("train.log: cannot be written") == 1
    assert not [h for h in logging.getLogger("mlic").handlers if type(h).__name__ == "_RunFile"]  # removed


def test_a_failed_run_says_why_in_its_log_and_gives_the_console_its_level_back(tmp_path, capsys):
    assert _train(tmp_path / "run", "run.log_level=error", "model.num_labels=5") == 1  # the data has 14
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "model.num_labels" in err  # the console: the CLI's one line
    lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert " ERROR error: " in lines[-1] and "model.num_labels" in lines[-1]
    log.info("after the failed run")
    assert capsys.readouterr().out == "after the failed run\n"  # info again: the level came back
