"""The BCE-family losses against their formulas worked out in plain Python floats, and against torch's BCE."""

import math

import pytest
import torch

from mlic.config import LossConfig
from mlic.errors import ConfigError
from mlic.losses import AsymmetricLoss, FocalLoss, WeightedBCE, build_loss, masked_mean, pos_weight

LOGITS = [[2.0, -1.0, 0.3], [-3.0, 0.0, 5.0]]  # sigmoid(-3) = 0.047 lies below the default clip 0.05
TARGETS = [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]
WEIGHTS = [3.0, 0.5, 2.0]


def asl_by_hand(logits, targets, gamma_neg, gamma_pos, clip, weights=None, known=None) -> float:
    """Ridnik et al.'s formula, entry by entry in floats, averaged over the known entries."""
    total, count = 0.0, 0
    for i, row in enumerate(logits):
        for c, x in enumerate(row):
            if known is not None and not known[i][c]:
                continue
            y, p = targets[i][c], 1 / (1 + math.exp(-x))
            p_m = max(p - clip, 0.0)
            positive = y * (1 - p) ** gamma_pos * math.log(p)
            negative = (1 - y) * p_m ** gamma_neg * math.log(1 - p_m)
            total += -((weights[c] if weights else 1.0) * positive + negative)
            count += 1
    return total / count


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize("gamma_neg, gamma_pos, clip", [(4, 0, 0.05), (4, 1, 0.05), (2, 2, 0.0), (0, 0, 0.2), (1.5, 0.5, 0.1)])
@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_asl_is_the_papers_formula(gamma_neg, gamma_pos, clip, weights):
    loss = AsymmetricLoss(gamma_neg, gamma_pos, clip, None if weights is None else t(weights))
    expected = asl_by_hand(LOGITS, TARGETS, gamma_neg, gamma_pos, clip, weights)
    assert loss(t(LOGITS), t(TARGETS)).item() == pytest.approx(expected, rel=1e-5)


def test_asl_one_negative_worked_out():
    # x = 0: p = 0.5, p_m = 0.45; the loss is -(0.45 ** 4) * log(0.55) = 0.0245150...
    loss = AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05)
    assert loss(t([[0.0]]), t([[0.0]])).item() == pytest.approx(0.04100625 * 0.5978370, rel=1e-5)
    # an easy negative (p = 0.047 <= clip) costs nothing
    assert loss(t([[-3.0]]), t([[0.0]])).item() == 0.0


@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_bce_is_torch_bce_exactly(weights):
    torch.manual_seed(0)
    logits, target = torch.randn(16, 3) * 4, (torch.rand(16, 3) < 0.3).float()
    w = None if weights is None else t(weights)
    ours, theirs = WeightedBCE(w)(logits, target), torch.nn.BCEWithLogitsLoss(pos_weight=w)(logits, target)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_asl_and_focal_without_focusing_or_clip_are_bce(weights):
    torch.manual_seed(1)
    logits = (torch.randn(32, 3) * 5).requires_grad_()
    target = torch.rand(32, 3)  # soft targets too
    w = None if weights is None else t(weights)
    bce = WeightedBCE(w)(logits, target)
    (bce_grad,) = torch.autograd.grad(bce, logits)
    for other in (AsymmetricLoss(0, 0, 0.0, w), FocalLoss(0.0, w)):
        value = other(logits, target)
        (grad,) = torch.autograd.grad(value, logits)
        assert value.item() == pytest.approx(bce.item(), abs=1e-6)
        assert torch.allclose(grad, bce_grad, atol=1e-7)


def test_focal_is_lin_et_al():
    loss = FocalLoss(gamma=2.0, pos_weight=t(WEIGHTS))
    expected = asl_by_hand(LOGITS, TARGETS, 2.0, 2.0, 0.0, WEIGHTS)
    assert loss(t(LOGITS), t(TARGETS)).item() == pytest.approx(expected, rel=1e-5)
    # focusing lowers the loss of a confident right answer far more than of a wrong one
    loss, bce = FocalLoss(gamma=2.0), WeightedBCE()
    right, wrong = (t([[3.0]]), t([[1.0]])), (t([[-3.0]]), t([[1.0]]))
    assert loss(*right) / bce(*right) < 0.01 < 0.5 < loss(*wrong) / bce(*wrong)


def test_soft_targets_weigh_both_terms():
    target = [[0.3, 0.7, 0.0], [1.0, 0.5, 0.9]]
    for gamma_neg, gamma_pos, clip in ((4, 1, 0.05), (0, 0, 0.0)):
        loss = AsymmetricLoss(gamma_neg, gamma_pos, clip, t(WEIGHTS))
        expected = asl_by_hand(LOGITS, target, gamma_neg, gamma_pos, clip, WEIGHTS)
        assert loss(t(LOGITS), t(target)).item() == pytest.approx(expected, rel=1e-5)
    # BCE of a soft target is torch's too
    assert torch.equal(WeightedBCE()(t(LOGITS), t(target)),
                       torch.nn.BCEWithLogitsLoss()(t(LOGITS), t(target)))


def test_focusing_weights_are_detached_unless_asked_not_to():
    # One positive, gamma_pos 1: d/dx -(1 - p) log p = -(1 - p) [(1 - p) - p log p]. With the weight detached
    # (the default, the paper code's disable_torch_grad_focal_loss) it is -(1 - p) ** 2.
    p = 1 / (1 + math.exp(-0.5))
    for detach, expected in ((True, -((1 - p) ** 2)), (False, -(1 - p) * ((1 - p) - p * math.log(p)))):
        x = torch.tensor([[0.5]], requires_grad=True)
        AsymmetricLoss(gamma_neg=0, gamma_pos=1, clip=0.0, detach_focusing=detach)(x, t([[1.0]])).backward()
        assert x.grad.item() == pytest.approx(expected, rel=1e-5)
    assert -((1 - p) ** 2) != pytest.approx(-(1 - p) * ((1 - p) - p * math.log(p)), rel=1e-2)


def all_losses():
    return [WeightedBCE(t(WEIGHTS)), FocalLoss(2.0, t(WEIGHTS)), AsymmetricLoss(4, 1, 0.05, t(WEIGHTS)),
            AsymmetricLoss(0.5, 0.5, 0.0), AsymmetricLoss(0.5, 0.0, 0.05)]


@pytest.mark.parametrize("loss", all_losses(), ids=lambda m: type(m).__name__)
def test_known_mask_leaves_unknown_entries_out(loss):
    known = [[True, False, True], [False, True, True]]
    mask = torch.tensor(known)
    logits = t(LOGITS).requires_grad_()
    value = loss(logits, t(TARGETS), mask)
    (grad,) = torch.autograd.grad(value, logits)
    # whatever sits at an unknown entry (a huge logit, a placeholder target of -1 or NaN) changes nothing
    for placeholder in (-1.0, float("nan"), float("inf"), 1e4):
        other_logits = torch.where(mask, t(LOGITS), torch.tensor(placeholder)).requires_grad_()
        other_target = torch.where(mask, t(TARGETS), torch.tensor(placeholder))
        other = loss(other_logits, other_target, mask.float())  # a 0/1 mask works as well as a bool one
        (other_grad,) = torch.autograd.grad(other, other_logits)
        assert torch.equal(other, value) and torch.equal(other_grad, grad)
    assert (grad[~mask] == 0).all() and (grad[mask] != 0).all()
    # the mean is over the 4 known entries, not the 6
    gamma_neg, gamma_pos, clip = getattr(loss, "gamma_neg", 0), getattr(loss, "gamma_pos", 0), getattr(loss, "clip", 0)
    weights = None if loss.pos_weight is None else WEIGHTS
    expected = asl_by_hand(LOGITS, TARGETS, gamma_neg, gamma_pos, clip, weights, known)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_masked_mean_of_an_inf_at_an_unknown_entry_is_finite():
    assert masked_mean(torch.tensor([float("inf"), 1.0, 2.0]), torch.tensor([False, True, True])).item() == 1.5
    assert masked_mean(torch.tensor([4.0, 1.0]), None).item() == 2.5


@pytest.mark.parametrize("loss", all_losses(), ids=lambda m: type(m).__name__)
def test_nothing_known_is_zero_not_nan(loss):
    logits = t(LOGITS).requires_grad_()
    value = loss(logits, t(TARGETS), torch.zeros(2, 3, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0 and torch.equal(logits.grad, torch.zeros(2, 3))


@pytest.mark.parametrize("loss", all_losses(), ids=lambda m: type(m).__name__)
def test_extreme_logits_give_finite_loss_and_gradient(loss):
    logits = torch.tensor([[100.0, -100.0, 100.0], [-100.0, 0.05, 1e4]], requires_grad=True)
    for target in (t([[1, 1, 0], [0, 0.5, 1]]), t([[0, 0, 1], [1, 1, 0]])):
        value = loss(logits, target)
        (grad,) = torch.autograd.grad(value, logits)
        assert torch.isfinite(value) and torch.isfinite(grad).all()
    # a confident wrong answer costs about |logit| (BCE's asymptote), not inf
    assert WeightedBCE()(t([[-100.0]]), t([[1.0]])).item() == pytest.approx(100.0)
    assert AsymmetricLoss(4, 0, 0.05)(t([[-100.0]]), t([[1.0]])).item() == pytest.approx(100.0)


def test_half_precision_logits_are_scored_in_float32():
    loss = AsymmetricLoss(4, 1, 0.05)
    value = loss(t(LOGITS).bfloat16(), t(TARGETS).bfloat16())
    assert value.dtype == torch.float32
    expected = asl_by_hand(torch.tensor(LOGITS).bfloat16().float().tolist(), TARGETS, 4, 1, 0.05)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_build_loss_follows_the_config():
    labels = torch.tensor([[1, 0], [0, 0], [0, 0], [1, 1]])
    bce = build_loss(LossConfig(), labels)
    assert type(bce) is WeightedBCE and bce.pos_weight is None
    focal = build_loss(LossConfig(name="focal", focal_gamma=1.5, pos_weight="auto"), labels)
    assert type(focal) is FocalLoss and focal.gamma_pos == focal.gamma_neg == 1.5 and focal.clip == 0
    assert torch.equal(focal.pos_weight, t([1.0, 3.0]))
    asl = build_loss(LossConfig(name="asl", gamma_neg=3, gamma_pos=1, asl_clip=0.1, pos_weight="auto",
                                pos_weight_clip=2.0), labels)
    assert type(asl) is AsymmetricLoss and (asl.gamma_neg, asl.gamma_pos, asl.clip) == (3, 1, 0.1)
    assert torch.equal(asl.pos_weight, pos_weight(labels, 2.0)) and torch.equal(asl.pos_weight, t([1.0, 2.0]))
    defaults = build_loss(LossConfig(name="asl"), labels)
    assert (defaults.gamma_neg, defaults.gamma_pos, defaults.clip) == (4, 0, 0.05)
    with pytest.raises(ConfigError, match="loss.name"):
        build_loss(LossConfig(name="hinge"), labels)


def test_pos_weight_is_a_buffer_that_moves_with_the_module():
    loss = build_loss(LossConfig(name="asl", pos_weight="auto"), torch.tensor([[1, 0], [0, 1], [0, 0]]))
    assert "pos_weight" in dict(loss.named_buffers())
    loss.to(torch.float64)  # what .to(device) does to it, it does to its dtype
    assert loss.pos_weight.dtype == torch.float64
    assert WeightedBCE().pos_weight is None and "pos_weight" not in WeightedBCE().state_dict()
