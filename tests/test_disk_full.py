"""A real disk that fills up (a tmpfs, filled by a ballast file) right before each of the run's writers in
turn: one line each, nothing lost, and the same command resumes once there is space, ending as the
uninterrupted run did. (Its own module, so that pytest-xdist runs it beside tests/test_durability.py.)"""

import re

import pytest

from tests.helpers import assert_same_run
from tests.test_durability import _run, straight_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return straight_run(tmp_path_factory)


# The run's writers in the order a run meets them; each restart fills the disk right before its writer
# (a failpoint writes a ballast file until the tmpfs is full), then the space is freed as a user would.
# Each `what` is how the error line names the write (the step logs and TensorBoard's step events, written
# by the main process alone inside the training loop, are reported right before the next checkpoint).
WRITERS = [
    ("cache", "the image cache"), ("cache-rows", "the image cache"), ("config", "config.yaml"),
    ("tensorboard", "the trackers' first records"), ("trackers", "trackers.json"), ("figures", "figures"),
    ("steps", "steps.jsonl"), ("checkpoint:2", "checkpoint epoch0001-step00000010"),
    # TensorBoard's step events and the step log are appended to files whose last tmpfs page has room: the
    # checkpoint after them is the first write that needs a new page
    ("tensorboard-steps", "checkpoint epoch0001-step00000010"), ("metrics", "metrics.jsonl"),
    ("export", "the model export"), ("checkpoint-files", "checkpoint epoch0001"),
    ("tensorboard:2", "tracker logs"),
]  # (TensorBoard's close at the end writes nothing: every log call flushed already)


def test_a_full_disk_at_each_writer_is_one_line_and_the_same_command_resumes(straight, tmpfs):
    run, cache = tmpfs.path / "run", tmpfs.path / "cache"
    line = re.compile(rf"^error: no space left on {re.escape(str(tmpfs.path))} \(tmpfs\) writing (.+) \(needs ~\d+ MB\)")
    size = 64
    for point, what in WRITERS:
        fault = point if ":" in point else f"{point}:1"
        done = _run(run, f"fill-{fault}", f"data.cache_dir={cache}")
        errors = [x for x in done.stderr.splitlines() if x.startswith("error:")]
        assert done.returncode == 1 and "Traceback" not in done.stderr, (point, done.stderr[-3000:])
        assert len(errors) == 1 and line.match(errors[0]), (point, errors[-5:])
        assert line.match(errors[0]).group(1).startswith(what), (point, errors[0])
        if point == "checkpoint:2":  # grow the disk instead of emptying it (unmounting a tmpfs erases it)
            size += 64
            tmpfs.resize(size)
        else:
            assert tmpfs.free_ballast() >= 1, point  # (with the one the remount left in place)
        assert not list((run / "checkpoints").glob(".tmp-*")) if (run / "checkpoints").exists() else True
    done = _run(run, None, f"data.cache_dir={cache}")
    assert done.returncode == 0 and "resumed from" in done.stdout, done.stderr[-3000:]
    assert_same_run(straight, run, [1, 2, 3])
