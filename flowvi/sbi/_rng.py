"""Seeds: deterministic, order-independent random streams for SBI routines.

Pyro and torch distributions draw from torch's global generator, so seeded work
runs inside ``seeded(...)``, which forks the global state (the caller's stream is
left untouched) and seeds it from a key. ``derive_seed(seed, *keys)`` mixes a
user seed with e.g. a batch index through numpy's ``SeedSequence``, so batch 17
of a campaign gets the same draws whether or not batches 0..16 ran in this process.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed determined by ``seed`` and integer ``keys`` (well mixed)."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, *[int(k) for k in keys]])
    return int(ss.generate_state(1, dtype=np.uint64)[0]) >> 1


@contextlib.contextmanager
def seeded(seed: int | None, *keys: int) -> Iterator[None]:
    """Run the body with torch's (and numpy's global) RNG seeded from ``(seed, *keys)``.

    ``seed=None`` runs the body on the caller's unseeded streams. The caller's
    generator states are restored on exit either way only when a seed is given.
    """
    if seed is None:
        yield
        return
    s = derive_seed(seed, *keys)
    with preserved():
        torch.manual_seed(s)
        np.random.seed(s % (2**32))
        yield


@contextlib.contextmanager
def preserved() -> Iterator[None]:
    """Put torch's CPU and numpy's global generator states back after the body."""
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            np.random.set_state(np_state)


def generator(seed: int | None, *keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, *keys)`` (random when ``seed`` is None)."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(derive_seed(seed, *keys))
    return g
