"""Per-step overhead of mlic's training step vs a bare PyTorch step, A/B in one process.

    python benchmarks/step_overhead.py [--model resnet18] [--blocks 8] [--steps 4]

Two copies of the same model (same init), one bare, one prepared by Accelerate and driven exactly as
`mlic.training.engine.train_one_epoch` drives it per step: per-step seeding, the batched device transform,
`accumulate`/`backward`, the finiteness flag, the optimizer wrapper, the device-side output buffer.
Blocks of `--steps` steps alternate between the two; medians of the per-step times. Isolates the
step from what happens between epochs (evaluation, checkpoints), which `engine_overhead.py` includes.
The last line is `ratio: <mlic/bare steps per second>`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from accelerate import Accelerator

from mlic.config import load_config
from mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD, DeviceTransform
from mlic.models import build_model
from mlic.training.engine import seed_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(None, [f"model.name={args.model}", "model.pretrained=false"])
    torch.manual_seed(0)
    bare_model, _ = build_model(cfg.model, 14)
    torch.manual_seed(0)
    our_model, _ = build_model(cfg.model, 14)
    bare_model.train()
    our_model.train()
    bare_opt = torch.optim.Adam(bare_model.parameters(), lr=1e-3)
    accelerator = Accelerator()
    our_model, our_opt = accelerator.prepare(our_model, torch.optim.Adam(our_model.parameters(), lr=1e-3))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    images = torch.randint(0, 256, (64, 3, args.size, args.size), dtype=torch.uint8)
    targets = (torch.rand(64, 14) < 0.2).float()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    transform = DeviceTransform(args.size, IMAGENET_MEAN, IMAGENET_STD)
    outputs: list[torch.Tensor] = []
    step = [0]

    def bare() -> None:
        x = (images.float() / 255 - mean) / std
        loss = loss_fn(bare_model(x), targets)
        loss.backward()
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)

    def ours() -> None:
        gen = seed_step(accelerator.device, 0, 1, step[0], 0)
        step[0] += 1
        x = transform(images, gen)
        with accelerator.accumulate(our_model):
            logits = our_model(x).float()
            loss = loss_fn(logits, targets)
            accelerator.backward(loss)
            torch.isfinite(loss.detach())
            our_opt.step()
            our_opt.zero_grad(set_to_none=True)
        outputs.append(torch.sigmoid(logits.detach()))

    times: dict[str, list[float]] = {"bare": [], "mlic": []}
    for _ in range(args.blocks):
        for name, fn in (("bare", bare), ("mlic", ours)):
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - start) / args.steps)
    b, m = statistics.median(times["bare"]), statistics.median(times["mlic"])
    print(f"{args.model} at {args.size} px, batch 64, 2 threads: bare {b * 1000:.0f} ms/step, mlic {m * 1000:.0f} ms/step "
          f"(blocks: bare {[round(t * 1000) for t in times['bare']]}, mlic {[round(t * 1000) for t in times['mlic']]})")
    print(f"ratio: {b / m:.3f}")


if __name__ == "__main__":
    main()
