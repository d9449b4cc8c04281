"""ML-Decoder classification head (Ridnik et al., WACV 2023): label queries cross-attend to spatial tokens."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLDecoder(nn.Module):
    """Attention head that reads every spatial token instead of a global average.

    One decoder layer without self-attention (the paper's finding: on fixed queries it is a constant
    transform); K = min(num_labels, num_groups) queries, each decoding ceil(num_labels / K) labels
    with its own weights ("group decoding"), so cost grows with K, not with the number of labels.
    """

    wants_tokens = True  # the model wrapper feeds spatial tokens, not pooled features

    def __init__(
        self,
        in_features: int,
        num_labels: int,
        num_groups: int = 100,
        embed_dim: int = 768,
        num_heads: int = 8,
        ff_dim: int = 2048,
        dropout: float = 0.1,
    ):
        super().__init__()
        sizes = dict(
            in_features=in_features,
            num_labels=num_labels,
            num_groups=num_groups,
            embed_dim=embed_dim,
            num_heads=num_heads,
        )
        for name, value in sizes.items():
            if value < 1:
                raise ValueError(f"MLDecoder: {name} must be >= 1, got {value}")
        if embed_dim % num_heads:
            raise ValueError(
                f"MLDecoder: embed_dim={embed_dim} must be divisible by num_heads={num_heads}; "
                f"pick e.g. embed_dim={num_heads * max(1, round(embed_dim / num_heads))}"
            )
        self.in_features = in_features
        self.num_labels = num_labels
        self.num_queries = min(num_labels, num_groups)
        self.labels_per_query = math.ceil(num_labels / self.num_queries)

        self.token_projection = nn.Sequential(nn.Linear(in_features, embed_dim), nn.ReLU())
        # Fixed random queries, as in the paper's code: every query passes through learned projections
        # (W_q of the attention, the norms), so K distinct random vectors already let training place them
        # anywhere; learning them too adds little. A persistent buffer, not a frozen parameter: it is
        # saved with the model (an exported model reproduces its predictions), DDP broadcasts it from
        # rank 0, and no parameter is left without a gradient.
        self.register_buffer("queries", torch.randn(self.num_queries, embed_dim))
        self.query_dropout = nn.Dropout(dropout)
        self.query_norm = nn.LayerNorm(embed_dim)
        self.cross_attention = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, batch_first=True)
        self.attention_dropout = nn.Dropout(dropout)
        self.attention_norm = nn.LayerNorm(embed_dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(embed_dim, ff_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff_dim, embed_dim)
        )
        self.feed_forward_dropout = nn.Dropout(dropout)
        self.feed_forward_norm = nn.LayerNorm(embed_dim)
        self.group_weight = nn.Parameter(torch.empty(self.num_queries, embed_dim, self.labels_per_query))
        self.group_bias = nn.Parameter(torch.zeros(num_labels))
        nn.init.xavier_normal_(self.group_weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens or a (B, D, H, W) feature map -> (B, num_labels) raw logits."""
        if tokens.ndim == 4:
            tokens = tokens.flatten(2).transpose(1, 2)
        if tokens.ndim != 3 or tokens.shape[-1] != self.in_features:
            raise ValueError(
                f"MLDecoder expects (B, N, {self.in_features}) tokens or a (B, {self.in_features}, H, W) map, "
                f"got shape {tuple(tokens.shape)}"
            )
        memory = self.token_projection(tokens)
        queries = self.queries.unsqueeze(0).expand(memory.shape[0], -1, -1)
        # The self-attention slot of a decoder layer is replaced by query + dropout(query), as the paper's code does.
        hidden = self.query_norm(queries + self.query_dropout(queries))
        attended = self.cross_attention(hidden, memory, memory, need_weights=False)[0]
        hidden = self.attention_norm(hidden + self.attention_dropout(attended))
        hidden = self.feed_forward_norm(hidden + self.feed_forward_dropout(self.feed_forward(hidden)))
        # Group fully connected: query k holds labels [k * labels_per_query, (k + 1) * labels_per_query).
        grouped = torch.einsum("bkd,kdl->bkl", hidden, self.group_weight)
        return grouped.flatten(1)[:, : self.num_labels] + self.group_bias
