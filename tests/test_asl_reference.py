"""mlic's asymmetric loss against the ASL paper's training code (Alibaba-MIIL/ASL, src/loss_functions/losses.py,
`AsymmetricLoss`, as train.py builds it: gamma_neg 4, gamma_pos 0, clip 0.05, disable_torch_grad_focal_loss
True), in gradients as well as values (issue 28); and a checkpoint from before `loss.asl_detach_focusing`
resuming only as it was trained."""

import json
import math

import pytest
import torch

from mlic.config import LossConfig
from mlic.errors import ConfigError
from mlic.losses import AsymmetricLoss, FocalLoss, build_loss
from mlic.training.manifest import write_manifest
from tests.helpers import fit_demo


def reference_asl(logits, target, gamma_neg=4.0, gamma_pos=1.0, clip=0.05, eps=1e-8, detach=True, weight=None):
    """The paper code's loss, written out again: log-likelihoods of the clamped probabilities (the negatives'
    shifted up by clip, capped at 1), times (1 - p_t) ** gamma_t with p_t the probability of the true side
    (computed under no_grad when `detach`), summed. `weight` scales the positive log-likelihood: mlic's
    pos_weight, an extension the reference does not have (None: as the reference)."""
    p = torch.sigmoid(logits)
    p_neg = 1 - p
    if clip > 0:
        p_neg = (p_neg + clip).clamp(max=1)
    log_pos = target * torch.log(p.clamp(min=eps))
    if weight is not None:
        log_pos = log_pos * weight
    log_likelihood = log_pos + (1 - target) * torch.log(p_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.set_grad_enabled(not detach):
            p_t = p * target + p_neg * (1 - target)
            focusing = torch.pow(1 - p_t, gamma_pos * target + gamma_neg * (1 - target))
        log_likelihood = log_likelihood * focusing
    return -log_likelihood.sum()


def grad_of(loss_fn, logits, *args):
    x = logits.clone().requires_grad_()
    value = loss_fn(x, *args)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


def test_the_issues_easy_negative_at_logit_0():
    # p = 0.5, p_m = 0.45, 1 - p_m = 0.55. Detached: d/dx -w log(1 - p + clip) = w p (1 - p) / 0.55 with w = 0.45^4.
    w = 0.45 ** 4
    detached = w * 0.25 / 0.55
    # kept: plus the weight's own derivative, -4 p_m^3 p (1 - p) log(0.55)
    kept = detached - 4 * 0.45 ** 3 * 0.25 * math.log(0.55)
    assert (round(detached, 4), round(kept, 4)) == (0.0186, 0.0731)  # the issue's figures
    x, y = torch.zeros(1, 1), torch.zeros(1, 1)
    _, reference = grad_of(lambda a, b: reference_asl(a, b, 4, 0, 0.05), x, y)
    _, ours = grad_of(AsymmetricLoss(4, 0, 0.05), x, y)
    _, old = grad_of(AsymmetricLoss(4, 0, 0.05, detach_focusing=False), x, y)
    _, reference_kept = grad_of(lambda a, b: reference_asl(a, b, 4, 0, 0.05, detach=False), x, y)
    assert reference.item() == pytest.approx(detached, rel=1e-5) and ours.item() == pytest.approx(detached, rel=1e-5)
    assert old.item() == pytest.approx(kept, rel=1e-5) and reference_kept.item() == pytest.approx(kept, rel=1e-5)
    assert old.item() / ours.item() == pytest.approx(3.92, abs=0.01)


CASES = [(4, 0, 0.05), (4, 1, 0.05), (2, 2, 0.0), (0, 1, 0.0), (1.5, 0.5, 0.2), (3, 0, 0.0)]


@pytest.mark.parametrize("gamma_neg, gamma_pos, clip", CASES)
@pytest.mark.parametrize("detach", [True, False])
def test_values_and_gradients_are_the_references(gamma_neg, gamma_pos, clip, detach):
    torch.manual_seed(0)
    logits = torch.cat([torch.randn(24, 5) * 4, torch.tensor([[0.0, -3.0, 3.0, 8.0, -8.0]])])  # -3: p below clip
    target = (torch.rand(25, 5) < 0.4).float()
    n = logits.numel()
    value, grad = grad_of(AsymmetricLoss(gamma_neg, gamma_pos, clip, detach_focusing=detach), logits, target)
    ref_value, ref_grad = grad_of(lambda a, b: reference_asl(a, b, gamma_neg, gamma_pos, clip, detach=detach),
                                  logits, target)
    assert value.item() * n == pytest.approx(ref_value.item(), rel=1e-5)  # mlic: the mean; the paper: the sum
    assert torch.allclose(grad * n, ref_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("gamma_neg, gamma_pos, clip", [(4, 0, 0.05), (4, 1, 0.05), (2, 1, 0.0)])
def test_pos_weight_and_a_known_mask_keep_the_reference_gradient(gamma_neg, gamma_pos, clip):
    torch.manual_seed(1)
    logits, target = torch.randn(16, 3) * 3, (torch.rand(16, 3) < 0.5).float()
    weight, known = torch.tensor([3.0, 0.5, 2.0]), torch.rand(16, 3) < 0.7
    value, grad = grad_of(AsymmetricLoss(gamma_neg, gamma_pos, clip, weight), logits, target, known)
    # the reference on the known entries alone, each positive term scaled by its label's weight
    ref_value, ref_grad = grad_of(lambda a, b: reference_asl(a[known], b[known], gamma_neg, gamma_pos, clip,
                                                             weight=weight.expand_as(b)[known]), logits, target)
    count = known.sum().item()
    assert value.item() * count == pytest.approx(ref_value.item(), rel=1e-5)
    assert torch.allclose(grad * count, ref_grad, rtol=1e-4, atol=1e-7)
    assert (grad[~known] == 0).all()


def test_focal_keeps_its_full_gradient():
    # Lin et al.'s derivative for a positive: d/dx -(1 - p)^g log p = (1 - p)^g (g p log p + p - 1)
    g, x = 2.0, torch.tensor([[0.5, -1.0]])
    p = torch.sigmoid(x)
    by_hand = (1 - p) ** g * (g * p * torch.log(p) + p - 1) / 2
    _, grad = grad_of(FocalLoss(g), x, torch.ones(1, 2))
    assert torch.allclose(grad, by_hand, rtol=1e-5)
    logits, target = torch.randn(8, 3) * 3, (torch.rand(8, 3) < 0.5).float()
    _, focal = grad_of(FocalLoss(g), logits, target)
    _, kept = grad_of(AsymmetricLoss(g, g, 0.0, detach_focusing=False), logits, target)
    _, detached = grad_of(AsymmetricLoss(g, g, 0.0), logits, target)
    assert torch.equal(focal, kept) and not torch.allclose(focal, detached)


def test_the_config_key_reaches_the_loss():
    labels = torch.tensor([[1, 0], [0, 1]])
    assert build_loss(LossConfig(name="asl"), labels).detach_focusing is True
    assert build_loss(LossConfig(name="asl", asl_detach_focusing=False), labels).detach_focusing is False
    assert build_loss(LossConfig(name="focal", asl_detach_focusing=True), labels).detach_focusing is False


OVERRIDES = ["train.max_steps_per_epoch=2", "run.progress=false", "loss.name=asl"]  # after TINY


def test_a_checkpoint_from_before_the_key_resumes_only_with_the_old_gradient(tmp_path, capsys):
    run = tmp_path / "run"
    fit_demo(run, *OVERRIDES, "train.epochs=1")
    (checkpoint,) = (run / "checkpoints").iterdir()
    state = json.loads((checkpoint / "mlic_state.json").read_text())
    assert state["identity"]["loss.asl_detach_focusing"] is True
    with pytest.raises(ConfigError, match=r"loss\.asl_detach_focusing") as refused:  # and back: new into old
        fit_demo(run, *OVERRIDES, "train.epochs=2", "loss.asl_detach_focusing=false")
    assert "\n" not in str(refused.value)
    # the checkpoint as mlic wrote it before the key existed: no key, its manifest re-written to match
    del state["identity"]["loss.asl_detach_focusing"]
    (checkpoint / "mlic_state.json").write_text(json.dumps(state, indent=1))
    write_manifest(checkpoint)
    with pytest.raises(ConfigError, match=r"is for loss\.asl_detach_focusing=None, this run has "
                                          r"loss\.asl_detach_focusing=True") as refused:
        fit_demo(run, *OVERRIDES, "train.epochs=2")
    assert "\n" not in str(refused.value) and "resume it with loss.asl_detach_focusing=false" in str(refused.value)
    capsys.readouterr()
    last = fit_demo(run, *OVERRIDES, "train.epochs=2", "loss.asl_detach_focusing=false")
    assert f"resumed from {checkpoint}" in capsys.readouterr().out
    assert last["train"]["images"] == 2 * 16 and math.isfinite(last["train"]["loss"])
