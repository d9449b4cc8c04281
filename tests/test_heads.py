"""Unit tests of the ML-Decoder head: shapes, gradients, state round trip, a tiny overfit."""

from __future__ import annotations

import pytest
import torch

from mlic.models.heads import MLDecoder

SMALL = dict(embed_dim=64, num_heads=8, ff_dim=128)  # the default 768/2048 would only slow the tests


def small_decoder(num_labels: int = 14, in_features: int = 32, **overrides) -> MLDecoder:
    return MLDecoder(in_features, num_labels, **{**SMALL, **overrides})


@pytest.mark.parametrize(
    "num_labels, expected_queries, expected_per_query", [(14, 14, 1), (100, 100, 1), (601, 100, 7)]
)
def test_group_decoding_shapes(num_labels, expected_queries, expected_per_query):
    torch.manual_seed(0)
    head = small_decoder(num_labels)
    assert head.wants_tokens is True
    assert (head.num_queries, head.labels_per_query) == (expected_queries, expected_per_query)
    assert head.queries.shape == (expected_queries, 64)
    assert head.group_weight.shape == (expected_queries, 64, expected_per_query)
    assert head(torch.randn(3, 49, 32)).shape == (3, num_labels)
    assert head(torch.randn(1, 5, 32)).shape == (1, num_labels)  # batch size 1, few tokens


def test_feature_map_equals_flattened_tokens_and_eval_is_deterministic():
    torch.manual_seed(0)
    head = small_decoder().eval()
    feature_map = torch.randn(2, 32, 7, 7)
    tokens = feature_map.flatten(2).transpose(1, 2)
    with torch.no_grad():
        from_map, from_tokens, again = head(feature_map), head(tokens), head(tokens)
    assert torch.allclose(from_map, from_tokens, atol=1e-6)
    assert torch.equal(from_tokens, again)


def test_every_trainable_parameter_gets_a_gradient():
    """DDP with find_unused_parameters=False fails on a parameter that gets no gradient."""
    torch.manual_seed(0)
    head = small_decoder(601).train()
    head(torch.randn(2, 10, 32)).sum().backward()
    missing = [name for name, p in head.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    assert "queries" not in dict(head.named_parameters())


def test_state_dict_round_trip_reproduces_predictions():
    torch.manual_seed(0)
    trained = small_decoder(601).eval()
    torch.manual_seed(1)  # a different draw: the fresh head's own random queries must be overwritten
    fresh = small_decoder(601).eval()
    assert not torch.equal(fresh.queries, trained.queries)
    assert "queries" in trained.state_dict()
    fresh.load_state_dict(trained.state_dict())
    tokens = torch.randn(2, 49, 32)
    with torch.no_grad():
        assert torch.equal(fresh(tokens), trained(tokens))


def test_queries_stay_fixed_through_an_optimizer_step():
    torch.manual_seed(0)
    head = small_decoder()
    queries_before = head.queries.clone()
    weight_before = head.group_weight.detach().clone()
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=0.1)
    head(torch.randn(4, 9, 32)).sum().backward()
    optimizer.step()
    assert torch.equal(head.queries, queries_before)
    assert not torch.equal(head.group_weight, weight_before)  # the step did move the trainable part


def test_bf16_autocast_on_cpu():
    torch.manual_seed(0)
    head = small_decoder()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(torch.randn(2, 49, 32))
    assert logits.shape == (2, 14) and torch.isfinite(logits).all()
    logits.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


def test_tiny_overfit():
    """Queries that ignored the tokens could fit only each label's base rate (about 0.75 of the start)."""
    torch.manual_seed(0)
    head = small_decoder()
    tokens = torch.randn(16, 49, 32)
    targets = (torch.rand(16, 14) < 0.3).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    with torch.no_grad():
        initial = loss_fn(head.eval()(tokens), targets).item()
    head.train()
    for _ in range(100):
        optimizer.zero_grad()
        loss_fn(head(tokens), targets).backward()
        optimizer.step()
    with torch.no_grad():
        final = loss_fn(head.eval()(tokens), targets).item()
    assert final < 0.2 * initial, (initial, final)


@pytest.mark.parametrize("embed_dim, num_heads", [(100, 8), (64, 0), (0, 8)])
def test_bad_dimensions_raise(embed_dim, num_heads):
    with pytest.raises(ValueError, match="MLDecoder"):
        MLDecoder(32, 14, embed_dim=embed_dim, num_heads=num_heads)


def test_wrong_token_width_raises():
    with pytest.raises(ValueError, match=r"\(B, N, 32\)"):
        small_decoder()(torch.randn(2, 49, 31))
