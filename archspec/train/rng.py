"""The random number generators a training step draws from: the data order of an epoch, and
the state of every generator (torch, CUDA, numpy, Python, the augmentations) saved in a checkpoint
and restored on resume, so that a resumed run repeats an uninterrupted one bit for bit."""
from __future__ import annotations

import random

import numpy as np
import torch


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of ``epoch``: a permutation that depends on (seed, epoch) only."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def rng_state(aug_generator: torch.Generator) -> dict:
    """Every random number generator a step draws from, for a checkpoint."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
        "augment": aug_generator.get_state(),
    }


def set_rng_state(rng: dict, aug_generator: torch.Generator) -> None:
    """The generators back as :func:`rng_state` saved them."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_tuples(rng["python"]))
    aug_generator.set_state(rng["augment"])


def _tuples(value):
    """torch.load(weights_only) gives lists back where random.getstate() had tuples."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
