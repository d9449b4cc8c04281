"""A compiled run through the real commands on one device: stopped by SIGTERM mid-epoch, resumed, evaluated and
predicted there, and compared with the same run left uninterrupted.

    python benchmarks/gpu_resume.py OUT [--model vit] [--steps 120] [--batch 64] [--device cuda|cpu]

Both runs: `accelerate launch --config_file launch/single_gpu.yaml train/<model>.py` (bf16; on a CPU
`python train/<model>.py` in fp32), `train.compile=true`, two epochs of `--steps` steps, a checkpoint every
`--steps // 3` steps. The second gets a SIGTERM at step 1.5 x `--steps` (`MLIC_FAULT=term-step:N`, the signal
SLURM sends before a preemption), saves and exits; the same command resumes it. Then `mlic evaluate` and
`mlic predict` run on the resumed run's exported model.

Tolerances, printed with the differences: on a CPU the resumed run equals the uninterrupted one (relative
1e-5: the suite's exact-resume tolerance). On a GPU cuDNN's autotuned algorithms and atomic adds in backward
passes differ from run to run, so two uninterrupted runs already differ: there the val loss must agree
within 2 % and mAP / macro-F1 within 0.02 absolute. `mlic evaluate` must reproduce the run's own val mAP
within 0.01 (it evaluates in float32, the run under bf16 autocast). Exit 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMPARED = ("loss", "mAP", "f1_macro")


def train(args, run: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    every = max(1, args.steps // 3)
    overrides = [
        "model.pretrained=false", f"data.image_size={args.image_size}", f"data.demo_images={args.demo_images}",
        f"train.batch_size={args.batch}", f"train.eval_batch_size={args.batch}", "train.epochs=2",
        f"train.max_steps_per_epoch={args.steps}", f"train.save_every_steps={every}", f"train.log_every={every}",
        "sampler.name=balanced", f"sampler.num_samples={args.batch * args.steps}", "train.compile=true",
        f"train.compile_backend={args.compile_backend}", f"run.output_dir={run}", "run.progress=false"]
    env = {**os.environ, "PYTHONPATH": python_path(), **({"MLIC_FAULT": fault} if fault else {})}
    if args.device == "cuda":
        command = ["accelerate", "launch", "--config_file", "launch/single_gpu.yaml", f"train/{args.model}.py"]
    else:
        command, env["ACCELERATE_USE_CPU"] = [sys.executable, f"train/{args.model}.py"], "true"
    start = time.perf_counter()
    done = subprocess.run([*command, *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    print(f"  {' '.join(command[-1:])} {'with ' + fault if fault else ''}: exit {done.returncode} in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    if done.returncode != 0:
        print(done.stdout[-1500:], done.stderr[-3000:], sep="\n", file=sys.stderr)
    return done


def python_path() -> str:
    """The repository first, then what the caller had (gpu_run.sh puts the carried wheels there)."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def val_lines(run: Path) -> list[dict]:
    return [x for x in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if x["split"] == "val"]


def check(ok: bool, what: str, problems: list[str]) -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        problems.append(what)


def compare(straight: Path, resumed: Path, exact: bool, problems: list[str]) -> None:
    a, b = val_lines(straight), val_lines(resumed)
    check([x["epoch"] for x in a] == [x["epoch"] for x in b] == [1, 2], "both runs have val lines of epochs 1, 2",
          problems)
    for x, y in zip(a, b):
        for key in COMPARED:
            diff = abs(x[key] - y[key])
            limit = 1e-5 * max(1.0, abs(x[key])) if exact else (0.02 * abs(x[key]) if key == "loss" else 0.02)
            check(diff <= limit, f"epoch {x['epoch']} val {key}: {x[key]:.5f} uninterrupted, {y[key]:.5f} resumed "
                  f"(|diff| {diff:.2e} <= {limit:.1e})", problems)


def serve(args, resumed: Path, problems: list[str]) -> None:
    """`mlic evaluate` and `mlic predict` on the resumed run's model, on the same device."""
    from mlic.data.demo import demo_root

    env = {**os.environ, "PYTHONPATH": python_path()}
    mlic = [sys.executable, "-c", "from mlic.cli import entry; entry()"]
    done = subprocess.run([*mlic, "evaluate", str(resumed / "model"), "--json", str(args.out / "evaluate.json")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    check(done.returncode == 0, f"mlic evaluate exits 0 {done.stderr[-500:] if done.returncode else ''}", problems)
    if done.returncode == 0:
        summary = json.loads((args.out / "evaluate.json").read_text())["summary"]
        line = next(x for x in val_lines(resumed)
                    if x["epoch"] == json.loads((resumed / "model" / "config.json").read_text())["epoch"])
        check(abs(summary["mAP"] - line["mAP"]) <= 0.01, f"mlic evaluate's mAP {summary['mAP']:.4f} is the run's "
              f"{line['mAP']:.4f} within 0.01", problems)
    images = demo_root(args.demo_images, 0)
    results = args.out / "results.txt"
    done = subprocess.run([*mlic, "predict", str(resumed / "model"), str(images), "--out", str(results)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    rows = results.read_text().splitlines() if results.exists() else []
    check(done.returncode == 0 and len(rows) == args.demo_images, f"mlic predict writes {len(rows)} rows for "
          f"{args.demo_images} images {done.stderr[-500:] if done.returncode else ''}", problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default="vit")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=120, help="steps of each of the two epochs")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--demo-images", type=int, default=2000)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--timeout", type=int, default=600, help="per command")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    straight, resumed, problems = args.out / "straight", args.out / "resumed", []
    print(f"gpu_resume: {args.model} on {args.device}, 2 epochs x {args.steps} steps of {args.batch}, compiled", flush=True)
    check(train(args, straight).returncode == 0, "the uninterrupted run finishes", problems)
    stop_at = args.steps + args.steps // 2
    first = train(args, resumed, f"term-step:{stop_at}")
    check(first.returncode == 0 and "stopped at epoch 2" in first.stdout,
          f"SIGTERM at step {stop_at} stops it mid-epoch 2 with a checkpoint", problems)
    second = train(args, resumed)
    check(second.returncode == 0 and "resumed from" in second.stdout, "the same command resumes it", problems)
    if not problems:
        compare(straight, resumed, exact=args.device == "cpu", problems=problems)
        serve(args, resumed, problems)
    print(f"gpu_resume: {'all checks passed' if not problems else f'{len(problems)} check(s) failed'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
