"""The BCE family of multi-label losses: weighted BCE (report §2.1, "Weighted loss"), focal and asymmetric.

Every loss takes `(logits, target, known=None)`: `target` may be soft (MixUp mixes 0/1 vectors), so the
positive and negative terms are weighted by y and 1 - y; `known` marks the entries whose label is known
(partial labels). Each loss is the mean over the known entries, so `asl` with no focusing and no clip,
`focal` with gamma 0 and `bce` give the same number and the report's learning rates carry over.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F

from mlic.errors import ConfigError
from mlic.labels import LabelMatrix

# The ASL paper code's floor under 1 - p_m before its log (reached only with a clip below it).
EPS = 1e-8


def pos_weight(labels, clip: float | None = None, known=None) -> torch.Tensor:
    """negatives / positives per label, as BCEWithLogitsLoss's `pos_weight` wants it.

    `labels`: a dense (N, C) 0/1 array or tensor (NaN entries unknown), a scipy CSR matrix/array (stored
    entries = positives) or a `LabelMatrix`; `known` marks the known entries (dense bool or CSR; None: all).
    Counted sparse, never densified: negatives are the known entries that are not positive, so unknown
    entries count nowhere. A label with no positive gets the number of negatives (as if it had one positive)
    rather than inf; `clip` caps every weight (rare labels can otherwise dominate the loss).
    """
    if not (isinstance(labels, LabelMatrix) or scipy.sparse.issparse(labels)):
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if labels.ndim != 2:
            raise ValueError(f"labels must be an (N, C) 0/1 array, got shape {labels.shape}")
        if np.issubdtype(labels.dtype, np.floating) and np.isnan(labels).any():  # NaN: unknown (labels.py)
            known_here = ~np.isnan(labels)
            labels = np.where(known_here, labels, 0)
            known = known_here if known is None else known_here & LabelMatrix.of(known).dense(dtype=bool)
    counts = LabelMatrix.of(labels, known)
    positives = torch.from_numpy(counts.positive_counts()).double()
    negatives = torch.from_numpy(counts.known_counts()).double() - positives
    weight = negatives / positives.clamp(min=1)
    if clip is not None:
        weight = weight.clamp(max=clip)
    return weight.float()


def masked_mean(per_entry: torch.Tensor, known: torch.Tensor | None) -> torch.Tensor:
    """Mean over the known entries; 0 (not NaN) when none is known. `torch.where` rather than a product:
    an inf at an unknown entry times 0 would be NaN."""
    if known is None:
        return per_entry.mean()
    known = known.to(device=per_entry.device, dtype=torch.bool).expand_as(per_entry)
    total = torch.where(known, per_entry, torch.zeros_like(per_entry)).sum()
    return total / known.sum().clamp(min=1)


class _MultiLabelLoss(torch.nn.Module):
    """The part every loss shares: float32 inputs, the `pos_weight` buffer, and the masked mean.
    A subclass says only what one entry costs (`per_entry`)."""

    def __init__(self, pos_weight: torch.Tensor | None = None):
        super().__init__()
        # A buffer, so `.to(device)` moves it; None when not weighted (mlic.training.run_log reads the attribute).
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight).float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        # Under autocast the logits may be bf16/fp16: logs and powers of probabilities need float32.
        logits, target = logits.float(), target.float()
        if known is not None:
            # The gradient stops here at unknown entries, so that what sits there (a placeholder target of
            # -1 or NaN, a non-finite logit) cannot reach it: in a product, 0 * NaN is NaN, even backwards.
            known = known.to(device=logits.device, dtype=torch.bool)
            logits = torch.where(known, logits, torch.zeros_like(logits))
        return masked_mean(self.per_entry(logits, target), known)

    def per_entry(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _weigh_positive(self, positive_term: torch.Tensor) -> torch.Tensor:
        return positive_term if self.pos_weight is None else positive_term * self.pos_weight


class WeightedBCE(_MultiLabelLoss):
    """Binary cross-entropy on logits; with `pos_weight` (C,), the positive term of label c is scaled by
    pos_weight[c]. Element for element torch's own BCEWithLogitsLoss(pos_weight=...)."""

    def per_entry(self, logits, target):
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight, reduction="none")


class AsymmetricLoss(_MultiLabelLoss):
    """Ridnik et al. 2021, "Asymmetric Loss For Multi-Label Classification", with p = sigmoid(logit):

        -[ y (1 - p)^gamma_pos log(p) + (1 - y) p_m^gamma_neg log(1 - p_m) ],  p_m = max(p - clip, 0)

    The shift `clip` discards easy negatives (p <= clip cost nothing). With `detach_focusing` (the default)
    the focusing weights (1 - p)^gamma_pos and p_m^gamma_neg are constants to autograd, as in the paper's
    training code (`disable_torch_grad_focal_loss=True`, its default since 2021): the loss values are the
    same either way, the gradients are not (an easy negative at logit 0, gamma_neg 4, clip 0.05: 0.0186
    detached, 0.0731 with the weight's own gradient). The paper's code sums over entries; this is the
    mean, as for `bce`.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05,
                 pos_weight: torch.Tensor | None = None, detach_focusing: bool = True):
        super().__init__(pos_weight)
        if clip < 0 or gamma_neg < 0 or gamma_pos < 0:
            raise ValueError(f"asl needs gamma_neg, gamma_pos, clip >= 0, got {gamma_neg}, {gamma_pos}, {clip}")
        self.gamma_neg, self.gamma_pos, self.clip = float(gamma_neg), float(gamma_pos), float(clip)
        self.detach_focusing = bool(detach_focusing)

    def _focusing(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.detach() if self.detach_focusing else weight

    def per_entry(self, logits, target):
        # log p and log(1 - p) from logsigmoid: finite for logits of any size, unlike log(sigmoid(x)).
        log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
        # (1 - p)^gamma as exp(gamma * log(1 - p)), from the same logsigmoid: no second sigmoid, exactly 1 at gamma 0.
        positive = target * self._focusing(torch.exp(self.gamma_pos * log_not_p)) * log_p
        if self.clip == 0:
            negative = (1 - target) * self._focusing(torch.exp(self.gamma_neg * log_p)) * log_not_p
        else:
            shifted = (torch.sigmoid(logits) - self.clip).clamp(min=0)  # p_m
            # 1 - p_m = min(1 - p + clip, 1) >= clip, so EPS only matters for a clip below it.
            log_not_shifted = torch.log((torch.sigmoid(-logits) + self.clip).clamp(min=EPS, max=1))
            negative = (1 - target) * self._focusing(shifted.pow(self.gamma_neg)) * log_not_shifted
        return -(self._weigh_positive(positive) + negative)


class FocalLoss(AsymmetricLoss):
    """Lin et al. 2017 for sigmoid outputs: -[ y (1 - p)^gamma log(p) + (1 - y) p^gamma log(1 - p) ], which
    is the asymmetric loss with both gammas equal and no clip. (No alpha: `pos_weight` does that job.) The
    focusing weight keeps its gradient, as in the focal paper (its derivative in Appendix A includes it)."""

    def __init__(self, gamma: float = 2.0, pos_weight: torch.Tensor | None = None):
        super().__init__(gamma_neg=gamma, gamma_pos=gamma, clip=0.0, pos_weight=pos_weight, detach_focusing=False)
        self.gamma = float(gamma)


def build_loss(cfg_loss, train_labels) -> torch.nn.Module:
    """The loss a `LossConfig` names (`bce`, `focal`, `asl`); with `pos_weight: auto`, weighted by the
    training split's `pos_weight` (clipped at `pos_weight_clip`)."""
    weight = pos_weight(train_labels, cfg_loss.pos_weight_clip) if cfg_loss.pos_weight == "auto" else None
    if cfg_loss.name == "bce":
        return WeightedBCE(weight)
    if cfg_loss.name == "focal":
        return FocalLoss(cfg_loss.focal_gamma, weight)
    if cfg_loss.name == "asl":
        return AsymmetricLoss(cfg_loss.gamma_neg, cfg_loss.gamma_pos, cfg_loss.asl_clip, weight,
                              cfg_loss.asl_detach_focusing)
    raise ConfigError(f"config key 'loss.name': {cfg_loss.name!r} is not a loss; use bce, focal or asl")
