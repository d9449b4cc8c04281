import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

from mlic.data.datasets import load_helsinki
from mlic.sampler import MultilabelBalancedSampler, ShuffleSampler

POLICIES = ["random", "cycle", "least_sampled"]


def _imbalanced_one_label(n_major=600, n_minor=10, classes=3):
    """Class 0 has 60x the images of each other class; one label per image."""
    rows = [0] * n_major + [c for c in range(1, classes) for _ in range(n_minor)]
    y = np.zeros((len(rows), classes), dtype=np.uint8)
    y[np.arange(len(rows)), rows] = 1
    return y


@pytest.mark.parametrize("policy", POLICIES)
def test_each_policy_is_uniform_over_classes_on_60_to_1(policy):
    y = _imbalanced_one_label()
    sampler = MultilabelBalancedSampler(y, policy, num_samples=6000, seed=1)
    freq = y[list(sampler)].sum(0) / 6000
    assert np.all(np.abs(freq - 1 / 3) <= 0.1 / 3), freq


@pytest.mark.parametrize("policy", POLICIES)
def test_co_occurring_labels_are_rebalanced(demo_dir, policy):
    y = load_helsinki(demo_dir).targets
    counts = y.sum(0)
    data_ratio = counts.max() / counts.min()
    sampled = y[list(MultilabelBalancedSampler(y, policy, seed=0, num_samples=5 * len(y)))].sum(0)
    assert sampled.max() / sampled.min() <= data_ratio / 5, (sampled, data_ratio)


@pytest.mark.parametrize("policy", POLICIES)
def test_order_depends_only_on_seed_and_epoch(policy):
    y = _imbalanced_one_label()
    a = MultilabelBalancedSampler(y, policy, seed=7)
    b = MultilabelBalancedSampler(y, policy, seed=7)
    a.set_epoch(3)
    b.set_epoch(1)
    list(b)
    b.set_epoch(3)  # reached through another path: same order
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    assert list(MultilabelBalancedSampler(y, policy, seed=8)) != list(MultilabelBalancedSampler(y, policy, seed=7))


@pytest.mark.parametrize("policy", POLICIES)
def test_resume_from_state_continues_the_sequence(demo_dir, policy):
    y = load_helsinki(demo_dir).targets
    straight = MultilabelBalancedSampler(y, policy, seed=2)
    orders = []
    for epoch in range(4):
        straight.set_epoch(epoch)
        orders.append(list(straight))
    first = MultilabelBalancedSampler(y, policy, seed=2)
    for epoch in range(2):
        first.set_epoch(epoch)
        list(first)
    first.set_epoch(2)
    state = first.state_dict()
    resumed = MultilabelBalancedSampler(y, policy, seed=0)
    resumed.load_state_dict(state)
    assert list(resumed) == orders[2]
    resumed.set_epoch(3)
    assert list(resumed) == orders[3]
    if policy == "least_sampled":  # the counts travel in the state
        assert sum(state["counts"]) > 0


def test_unlabelled_images_are_drawn_at_their_share():
    y = np.zeros((1000, 2), dtype=np.uint8)
    y[:300, 0] = 1
    y[300:600, 1] = 1  # 400 images with no label
    order = np.array(list(MultilabelBalancedSampler(y, "random", num_samples=20000)))
    assert abs((order >= 600).mean() - 0.4) < 0.02
    order = np.array(list(MultilabelBalancedSampler(y, "random", num_samples=20000, empty_share=0.1)))
    assert abs((order >= 600).mean() - 0.1) < 0.01
    assert not (np.array(list(MultilabelBalancedSampler(y, "cycle", empty_share=0.0))) >= 600).any()


def test_label_without_positives_is_named():
    y = np.zeros((10, 3), dtype=np.uint8)
    y[:, 0] = 1
    with pytest.raises(ValueError, match="river, sea"):
        MultilabelBalancedSampler(y, label_names=["people", "river", "sea"])


@pytest.mark.parametrize("sampler_kind", ["balanced", "shuffle"])
@pytest.mark.parametrize(("num_samples", "drop_last"), [(640, True), (620, False)])
def test_accelerate_shards_the_global_order_without_overlap_or_loss(sampler_kind, num_samples, drop_last):
    y = _imbalanced_one_label()
    if sampler_kind == "balanced":
        sampler = MultilabelBalancedSampler(y, seed=3, num_samples=num_samples)
    else:
        sampler = ShuffleSampler(num_samples, seed=3)
    batches = BatchSampler(sampler, batch_size=8, drop_last=drop_last)
    shards = [list(BatchSamplerShard(batches, num_processes=2, process_index=r)) for r in range(2)]
    global_order = [i for b in batches for i in b]
    assert len(shards[0]) == len(shards[1])
    dealt = [i for pair in zip(*shards) for b in pair for i in b]
    # Batches are dealt in turn: rank 0 gets batches 0, 2, 4..., rank 1 gets 1, 3, 5...: the union is
    # the global order, each position once. A short tail is padded from the start (even_batches).
    assert dealt[: len(global_order)] == global_order
    assert dealt[len(global_order):] == global_order[: len(dealt) - len(global_order)]
    assert len(dealt) - len(global_order) < 2 * 8


def test_sampler_accepts_tensors():
    y = torch.tensor(_imbalanced_one_label())
    assert len(list(MultilabelBalancedSampler(y, "random", num_samples=50))) == 50
