"""Where a run's numbers go besides metrics.jsonl: accelerate's trackers, chosen by `run.trackers`
(tensorboard, mlflow, wandb). mlflow and wandb are imported by accelerate only when chosen.

A restarted run continues its tracker runs: `RUN/trackers.json` keeps their ids (the MLflow run id, the
W&B run id, resumed with `resume="allow"`) and what has been published. Tracker points cannot be taken
back (MLflow has no delete), so nothing reaches a tracker before the checkpoint that covers it is saved:
an epoch's metrics are published after its checkpoint, step losses after the next checkpoint (a run
killed in between trains those steps again and logs them then, once). A kill between a checkpoint and
`trackers.json` is mended on resume: what the checkpoint covers and was not published yet is read back
from metrics.jsonl (epochs) and `RUN/steps.jsonl` (step losses, trimmed to the checkpoint like
metrics.jsonl). TensorBoard, which overlays a rewritten step, also gets step losses live.
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, WandBTracker

from mlic.config import Config
from mlic.disk import replace_text, writing
from mlic.errors import ConfigError, MlicError
from mlic.jsonl import read_jsonl, trim_jsonl
from mlic.logs import log
from mlic.ranks import on_main

STATE_FILE = "trackers.json"
STEPS_FILE = "steps.jsonl"  # the step logs (train.log_every), main process, one JSON line per logged step
EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}  # tracker -> the module it needs (pip install 'mlic[NAME]')


def check_trackers(cfg: Config) -> None:
    """Before any data is read: a chosen tracker whose library is missing, or an MLflow store it cannot
    use, is a config error."""
    for name in cfg.run.trackers:
        if name in EXTRAS and importlib.util.find_spec(EXTRAS[name]) is None:
            raise ConfigError(f"config key 'run.trackers': {name} is not installed; pip install 'mlic[{name}]' "
                              f"(or leave it out of run.trackers)")
    if "mlflow" in cfg.run.trackers:
        _check_mlflow_store()


def _check_mlflow_store() -> None:
    """MLflow opens its store lazily, inside the first run: its refusals (a plain folder without
    MLFLOW_ALLOW_FILE_STORE, the default sqlite store without the full mlflow package) would come after
    the data and model are built. The client builds the store at once, and contacts no server."""
    import mlflow

    try:
        mlflow.MlflowClient()
    except Exception as exc:  # mlflow raises its own exception types, and ImportError for a missing driver
        raise ConfigError(
            f"config key 'run.trackers': MLflow cannot use its store {mlflow.get_tracking_uri()!r}: "
            f"{str(exc).splitlines()[0]} Set MLFLOW_TRACKING_URI to a tracking server (http://...), or to file:PATH "
            "with MLFLOW_ALLOW_FILE_STORE=true, or pip install mlflow for its local database") from None


def read_state(out: Path) -> dict[str, Any]:
    path = out / STATE_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as exc:  # written atomically: only a hand or a bad disk damages it
        raise MlicError(f"{path}: not valid JSON ({exc}); delete it to start new tracker runs for this run "
                        "folder") from None


def write_state(out: Path, state: dict[str, Any]) -> None:
    with writing(STATE_FILE, out, point="trackers"):
        replace_text(out / STATE_FILE, json.dumps(state, indent=1))


def tracker_state(out: Path, resumable: bool) -> dict[str, Any]:
    """RUN/trackers.json as this start continues it: as saved when there is a checkpoint to resume
    (`resumable`); otherwise the tracker run ids only if nothing was published (a first start killed
    before its first checkpoint), else nothing: a run folder whose checkpoints were deleted starts new
    tracker runs, since its old ones already hold the epochs it will train again."""
    saved = read_state(out)
    if resumable:
        return saved
    if saved.get("epoch") or saved.get("step"):
        return {}
    return {k: v for k, v in saved.items() if k in EXTRAS}


def make_trackers(cfg: Config, resumable: bool) -> list[GeneralTracker]:
    """The trackers of `cfg.run.trackers`, continuing the run folder's tracker runs (`tracker_state`)."""
    out = Path(cfg.run.output_dir)
    saved = tracker_state(out, resumable)
    name = out.resolve().name
    trackers: list[GeneralTracker] = []
    for kind in dict.fromkeys(cfg.run.trackers):  # each once
        if kind == "tensorboard":
            trackers.append(TensorBoardTracker("tensorboard", out))  # RUN/tensorboard, as always
        elif kind == "mlflow":  # MLFLOW_TRACKING_URI says where; MLFLOW_RUN_ID, if set, wins (accelerate)
            trackers.append(MLflowTracker(experiment_name=cfg.run.tracker_project, run_id=saved.get("mlflow"),
                                          run_name=name))
        elif kind == "wandb":  # WANDB_MODE=offline keeps it in RUN/wandb
            run_id = saved.get("wandb") or uuid.uuid4().hex[:16]
            trackers.append(WandBTracker(cfg.run.tracker_project, id=run_id, resume="allow", name=name, dir=str(out)))
    return trackers


class Publisher:
    """The run's side of the trackers (main process): config once, step losses and epoch metrics only
    behind a saved checkpoint."""

    def __init__(self, accelerator, out: Path, resumed_step: int):
        """`resumed_step`: the global step of the checkpoint this start resumed (0: a fresh start)."""
        self.acc, self.out, self.resumed_step = accelerator, out, resumed_step
        self.pending: list[tuple[int, dict[str, float]]] = []  # step logs waiting for a checkpoint
        self.failed: MlicError | None = None  # a step log's failed write: raised before the next checkpoint
        self.state: dict[str, Any] = {}

    def start(self, config: dict[str, Any]) -> None:
        """Every rank calls this; the main process reads and trims what an earlier start left and starts the
        trackers (accelerate starts them on the main process only), and every rank learns how it went."""

        def begin() -> None:
            self.state = tracker_state(self.out, self.resumed_step > 0)
            with writing(STEPS_FILE, self.out, point="steps-trim"):
                self.pending = _trim_steps(self.out / STEPS_FILE, self.resumed_step, after=self.state.get("step", 0))
            with writing("the trackers' first records", self.out, point="tensorboard"):
                self.acc.init_trackers("mlic")  # the project names are set on the trackers themselves
                self._record_start(config)

        on_main(self.acc, begin)

    def raise_failed(self) -> None:
        """Before a checkpoint (main process): a step log that could not be written stops the run there, so
        that the resumed run trains and logs those steps again."""
        if self.failed is not None:
            raise self.failed

    def _record_start(self, config: dict[str, Any]) -> None:
        for tracker in self.acc.trackers:
            if tracker.name == "mlflow":
                self.state["mlflow"] = tracker.tracker.info.run_id
                _store_mlflow_params(tracker, config)
            else:
                tracker.store_init_configuration(config)
            if tracker.name == "wandb":
                self.state["wandb"] = tracker.run.id
                _wandb_axes(tracker.run)
        write_state(self.out, self.state)

    def step(self, step: int, values: dict[str, float]) -> None:
        """A step's losses: TensorBoard now, the others once a checkpoint covers `step`."""
        if not self.acc.is_main_process or self.failed is not None:
            return
        try:  # in the training loop, where the other ranks do not wait for this one: a failure waits too
            with writing("TensorBoard events", self.out, point="tensorboard-steps"):
                for tracker in self.acc.trackers:
                    if tracker.name == "tensorboard":
                        tracker.log(values, step=step)
            with writing(STEPS_FILE, self.out, point="steps"), (self.out / STEPS_FILE).open("a") as fh:
                fh.write(json.dumps({"step": step, **values}) + "\n")  # a kill before the next checkpoint loses no step
        except MlicError as exc:  # a full disk, a file system gone read-only
            self.failed = exc
            return
        self.pending.append((step, values))

    def checkpoint_saved(self, epochs_done: int, global_step: int, metrics: Path) -> None:
        """Publish what the checkpoint at (`epochs_done` whole epochs, `global_step`) covers and was not
        published: the pending step logs, then the lines of `metrics` (metrics.jsonl) of the epochs it
        completes, read only when it completes one. The main process calls it (`mlic.training.run_log.publish`)."""
        lines = read_jsonl(metrics) if epochs_done > self.state.get("epoch", 0) else []
        steps = [(s, v) for s, v in self.pending if self.state.get("step", 0) < s <= global_step]
        self.pending = [(s, v) for s, v in self.pending if s > global_step]
        by_epoch: dict[int, dict[str, float]] = {}
        for line in lines:
            if self.state.get("epoch", 0) < line["epoch"] <= epochs_done:
                by_epoch.setdefault(line["epoch"], {}).update(epoch_scalars(line))
        if not (steps or by_epoch):
            return
        with writing("tracker logs (TensorBoard events)", self.out, point="tensorboard"):
            for step, values in steps:
                self._log(values, step, "global_step")
            for epoch in sorted(by_epoch):
                self._log(by_epoch[epoch], epoch, "epoch")
        self.state["step"] = max([self.state.get("step", 0), *(s for s, _ in steps)])
        self.state["epoch"] = max([self.state.get("epoch", 0), *by_epoch])
        write_state(self.out, self.state)

    def _log(self, values: dict[str, float], step: int, axis: str) -> None:
        for tracker in self.acc.trackers:
            if tracker.name == "wandb":  # one step counter per W&B run: the axis is a logged value instead
                tracker.log({**values, axis: step})
            elif tracker.name != "tensorboard" or axis == "epoch":  # TensorBoard had the steps live
                tracker.log(values, step=step)


def epoch_scalars(line: dict[str, Any]) -> dict[str, float]:
    """One metrics.jsonl line as tracker scalars: `SPLIT/metric`; the train line's lr as `lr`."""
    split = line["split"]
    scalars = {f"{split}/{k}": v for k, v in line.items() if k not in ("epoch", "split", "lr")
               and isinstance(v, int | float) and not isinstance(v, bool)}
    if "lr" in line:
        scalars["lr"] = line["lr"]
    return scalars


def _trim_steps(path: Path, resumed_step: int, after: int) -> list[tuple[int, dict[str, float]]]:
    """Keep the step logs up to the resumed checkpoint (the steps after it are trained and logged again)
    and return those after `after` (the last published step): logged, covered, not yet published."""
    kept = trim_jsonl(path, "step", resumed_step)
    return [(x.pop("step"), x) for x in kept if x["step"] > after]


def _store_mlflow_params(tracker: MLflowTracker, config: dict[str, Any]) -> None:
    """MLflow refuses to change a logged parameter: a resumed run logs only the new keys and says which
    values differ from the first start (RUN/config.yaml has the resolved config of this start)."""
    import mlflow

    logged = mlflow.get_run(tracker.tracker.info.run_id).data.params
    new = {k: v for k, v in config.items() if k not in logged}
    changed = sorted(k for k, v in config.items() if k in logged and logged[k] != str(v))
    if new:
        tracker.store_init_configuration(new)
    if changed:
        log.info(f"note: MLflow keeps the first start's value of {', '.join(changed)} (a parameter cannot change)")


def _wandb_axes(run) -> None:
    """Epoch metrics against `epoch`, step losses against `global_step` (both logged as values)."""
    run.define_metric("epoch")
    run.define_metric("global_step")
    for prefix in ("train/*", "val/*", "val_ema/*", "lr"):
        run.define_metric(prefix, step_metric="epoch")
    run.define_metric("step/*", step_metric="global_step")
