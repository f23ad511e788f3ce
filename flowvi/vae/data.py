"""Data for VAEs: binarized MNIST from the project's shared folder, or the user's arrays.

Nothing is downloaded. The default location is ``<repo root>/../shared/data/
binarized_mnist/binarized_mnist.npz`` (see the shared data README); pass ``path=``
for another file, or ``arrays=`` to use data already in memory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

SPLITS = ("train", "valid", "test")


def default_mnist_path() -> Path:
    """``<repo root>/../shared/data/binarized_mnist/binarized_mnist.npz``."""
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "data" / "binarized_mnist" / "binarized_mnist.npz"


def as_data_tensor(x, what: str = "data", binary: bool = False, x_dim: int | None = None) -> Tensor:
    """Check and convert ``x`` (array-like, (N, x_dim)) to a float32 tensor.

    Raises ``ValueError`` with the reason for a wrong rank or width, NaN/inf, or
    (``binary=True``) values other than 0 and 1.
    """
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    if t.dtype == torch.bool or not t.is_floating_point():
        t = t.to(torch.float32)
    if t.dim() != 2:
        raise ValueError(f"{what} must be a 2-D array (N, x_dim), got shape {tuple(t.shape)}")
    if x_dim is not None and t.shape[1] != x_dim:
        raise ValueError(f"{what} has {t.shape[1]} features per row but the model expects x_dim={x_dim}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contains NaN or inf ({int((~torch.isfinite(t)).sum())} entries)")
    if binary and not ((t == 0) | (t == 1)).all():
        raise ValueError(
            f"{what} is not binary (values other than 0/1 found, e.g. {t[(t != 0) & (t != 1)][:3].tolist()}); "
            "a Bernoulli decoder needs 0/1 data: binarize it or use likelihood='gaussian'"
        )
    return t


def load_binarized_mnist(path: str | os.PathLike | None = None, arrays: Mapping[str, object] | None = None) -> dict[str, Tensor]:
    """Binarized MNIST (Larochelle & Murray split) as float32 tensors.

    Args:
        path: an ``.npz`` with arrays ``train``, ``valid``, ``test`` (each (N, 784),
            0/1). Defaults to ``default_mnist_path()``.
        arrays: instead of a file, a mapping with the same keys holding the user's
            own arrays (any width; ``valid``/``test`` optional).

    Returns:
        ``{"train": (50000, 784), "valid": (10000, 784), "test": (10000, 784)}``
        for the shipped file. Note ``test`` is sorted by class: evaluate on all of
        it or a seeded random subset, never a leading slice.
    """
    if arrays is None:
        p = Path(path) if path is not None else default_mnist_path()
        if not p.is_file():
            raise FileNotFoundError(
                f"binarized MNIST not found at {p}. Nothing is downloaded: put binarized_mnist.npz "
                "(arrays train/valid/test, (N, 784) 0/1) there, pass path=..., or pass your own "
                "arrays with arrays={'train': ..., 'valid': ..., 'test': ...}"
            )
        with np.load(p) as f:
            arrays = {k: f[k] for k in f.files}
    if "train" not in arrays:
        raise ValueError(f"need at least a 'train' array, got keys {sorted(arrays)}")
    out = {}
    for k in SPLITS:
        if k in arrays and arrays[k] is not None:
            out[k] = as_data_tensor(arrays[k], what=f"{k} split", binary=True)
    widths = {v.shape[1] for v in out.values()}
    if len(widths) != 1:
        raise ValueError(f"splits disagree on the number of features: {widths}")
    return out


def seeded_subset(x: Tensor, n: int | None, seed: int = 0) -> Tensor:
    """A seeded random subset of ``n`` rows of ``x`` (all rows when ``n`` is None or >= N).

    Used for evaluation on class-sorted test sets, where a leading slice would be biased.
    """
    if n is None or n >= x.shape[0]:
        return x
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx]
