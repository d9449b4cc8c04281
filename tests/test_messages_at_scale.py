"""A message about many items names the first few and counts the rest: an error about 10,000 labels is a line."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse

from mlic.config import load_config
from mlic.data.pipeline import check_labels
from mlic.errors import ConfigError, some
from mlic.sampler import MultilabelBalancedSampler

NAMES = [f"/m/{k:05d}" for k in range(10_000)]


def test_some_names_five_and_counts_the_rest():
    assert some([]) == "" and some(["a", "b"]) == "a, b"
    assert some(range(10_000)) == "0, 1, 2, 3, 4 and 9,995 more"
    assert some(["x", "y", "z"], first=2, sep="; ") == "x; y and 1 more"


def test_a_10000_label_sampler_missing_5000_labels_is_one_short_line():
    rows = np.arange(5_000)  # image k is a positive of label 2k: the odd labels have no positive
    labels = scipy.sparse.csr_matrix((np.ones(5_000), (rows, 2 * rows)), shape=(5_000, 10_000))
    with pytest.raises(ValueError) as caught:
        MultilabelBalancedSampler(labels, label_names=NAMES)
    message = str(caught.value)
    assert len(message) < 400 and "\n" not in message, message
    assert "5,000 label(s)" in message and "/m/00001, /m/00003" in message and "and 4,995 more" in message


@pytest.mark.parametrize("overrides", [[f"data.labels=[{', '.join(f'x{k}' for k in range(10_000))}]"],
                                       ["model.num_labels=3"]])
def test_label_mismatches_at_10000_labels_are_one_short_line(overrides):
    dataset = SimpleNamespace(num_labels=len(NAMES), label_names=NAMES, source="data/")
    with pytest.raises(ConfigError) as caught:
        check_labels(load_config(None, overrides), dataset)
    assert len(str(caught.value)) < 400 and "and 9,995 more" in str(caught.value), str(caught.value)
