"""Run under `accelerate launch`: each rank writes the indices it received from the prepared loader."""

import json
import sys

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

from mlic.sampler import MultilabelBalancedSampler

out = sys.argv[1]
rng = np.random.default_rng(0)
labels = (rng.random((203, 5)) < [0.6, 0.2, 0.1, 0.05, 0.02]).astype(np.uint8)
labels[:5, 4] = 1
sampler = MultilabelBalancedSampler(labels, "least_sampled", num_samples=200, seed=4)
loader = DataLoader(TensorDataset(torch.arange(len(labels))), batch_size=10, sampler=sampler)
accelerator = Accelerator()
loader = accelerator.prepare(loader)
record = {}
for epoch in (0, 1):
    loader.set_epoch(epoch)
    record[epoch] = [int(i) for (batch,) in loader for i in batch]
with open(f"{out}/rank{accelerator.process_index}.json", "w") as fh:
    json.dump({"world": accelerator.num_processes, "record": record}, fh)
