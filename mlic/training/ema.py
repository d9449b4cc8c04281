"""An exponential moving average of the weights (train.ema_decay), evaluated beside them every epoch.

The average is a float32 copy of the unwrapped model, updated after every optimizer step that was taken:
parameters and floating buffers (BatchNorm statistics) move towards the model's by `1 - decay`, integer
buffers are copied. float32 whatever the training precision: in bf16 an update of `1 - 0.9999` of a
weight rounds to nothing and the average stops moving. Every rank updates its own copy from the same
weights (DDP keeps them equal), so the averaged parameters stay identical without communication. Buffers
are not: each rank's BatchNorm statistics move with its own batches, so before the average is evaluated
every rank takes the main process's (`share_buffers`), the ones a checkpoint and the export hold.

With warm-up the decay of update t (from 0) is min(decay, (1 + t) / (10 + t)) (TensorFlow's
`ExponentialMovingAverage(num_updates=...)`): early averages do not drag in the random initialisation.
The update count lives in `RunState.ema_updates`; the tensors are an accelerate checkpointing object,
saved and restored with the rest of the checkpoint.
"""

from __future__ import annotations

import copy

import torch
from accelerate.utils import broadcast


class WeightEma:
    """`model`: the unwrapped training model (no DDP / compile wrapper), whose tensors it follows."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)
        self._pairs = self._match(model)  # (ema tensors, model tensors): to lerp, and to copy

    def decay_at(self, updates: int) -> float:
        return min(self.decay, (1 + updates) / (10 + updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, updates: int) -> None:
        """One step towards the model; `updates`: the steps averaged so far."""
        (ema_float, model_float), (ema_other, model_other) = self._pairs
        weight = 1.0 - self.decay_at(updates)
        # foreach lerp needs one dtype: bf16/fp16 weights (DeepSpeed, or a half model) are upcast first
        torch._foreach_lerp_(ema_float, [t.float() if t.dtype != torch.float32 else t for t in model_float], weight)
        for mine, theirs in zip(ema_other, model_other):
            mine.copy_(theirs)

    def _match(self, model: torch.nn.Module):
        ours = dict(self.module.named_parameters()) | dict(self.module.named_buffers())
        theirs = dict(model.named_parameters()) | dict(model.named_buffers())
        if ours.keys() != theirs.keys():
            raise RuntimeError("the EMA copy and the model have different tensors")
        floats = [name for name, t in ours.items() if t.is_floating_point()]
        others = [name for name, t in ours.items() if not t.is_floating_point()]
        return ([ours[n] for n in floats], [theirs[n].detach() for n in floats]), \
               ([ours[n] for n in others], [theirs[n] for n in others])

    def share_buffers(self, accelerator) -> None:
        """Every rank takes the main process's buffers (one broadcast per buffer, once per evaluation)."""
        if accelerator.num_processes > 1:
            for buffer in self.module.buffers():
                broadcast(buffer, from_process=0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
