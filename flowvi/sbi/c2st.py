"""Classifier two-sample test (C2ST; Lopez-Paz & Oquab 2017), as used in the SBI benchmark.

An MLP (two ReLU hidden layers of ``10 * d`` units, as in Lueckmann et al. 2021)
learns to tell sample ``a`` from sample ``b``; the score is its 5-fold
cross-validated accuracy: 0.5 when the two are indistinguishable, 1.0 when
disjoint. Inputs are z-scored with the mean and std of ``a`` (the reference).

Written in torch, no scikit-learn: the ``n_folds`` classifiers are trained at
once as one batched network (weights ``(folds, ...)``) with minibatch Adam,
each on its own training mask, and scored on its held-out fold.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from .._optim import adam
from ._rng import generator


def _init(g: torch.Generator, folds: int, fan_in: int, fan_out: int) -> tuple[Tensor, Tensor]:
    bound = 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's default init range
    w = (torch.rand(folds, fan_in, fan_out, generator=g) * 2 - 1) * bound
    b = (torch.rand(folds, 1, fan_out, generator=g) * 2 - 1) * bound
    return w.requires_grad_(), b.requires_grad_()


def c2st(
    a: Tensor,
    b: Tensor,
    seed: int = 0,
    *,
    n_folds: int = 5,
    hidden: int | None = None,
    max_epochs: int = 60,
    batch_size: int = 512,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    tol: float = 1e-3,
    patience: int = 5,
    z_score: bool = True,
    return_folds: bool = False,
) -> float | Tensor:
    """Cross-validated accuracy of a classifier separating ``a (n, d)`` from ``b (m, d)``.

    Training is in the spirit of scikit-learn's ``MLPClassifier`` as used by sbibm
    (Adam on minibatches, an L2 penalty, stop once the epoch's training loss has not
    improved by ``tol`` for ``patience`` epochs), tuned to finish in seconds: an
    "epoch" is one pass over the data but at least 10 minibatches (small samples get
    several passes), at most ``max_epochs``. On 10,000 vs 10,000 draws in 10-D it
    takes about 20 s on one CPU core.

    Args:
        seed: fold assignment, initialisation and minibatch order.
        n_folds: cross-validation folds.
        hidden: hidden width (default ``10 * d``).
        max_epochs, batch_size, lr, weight_decay, tol, patience: training (see above).
        z_score: standardise both samples with ``a``'s mean and std.
        return_folds: return the ``(n_folds,)`` fold accuracies instead of their mean.
    """
    a = torch.as_tensor(a, dtype=torch.float32)
    b = torch.as_tensor(b, dtype=torch.float32)
    if a.dim() == 1:
        a, b = a.unsqueeze(1), b.unsqueeze(1)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"c2st needs two samples (n, d) and (m, d), got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("c2st samples contain NaN or inf")
    n_total = a.shape[0] + b.shape[0]
    if min(a.shape[0], b.shape[0]) < n_folds:
        raise ValueError(f"each sample needs at least n_folds={n_folds} rows")
    d = a.shape[1]
    x = torch.cat([a, b])
    if z_score:
        std = a.std(0)
        x = (x - a.mean(0)) / torch.where(std > 0, std, torch.ones_like(std))
    y = torch.cat([torch.zeros(a.shape[0]), torch.ones(b.shape[0])])
    g = generator(seed, 5)
    fold = torch.empty(n_total, dtype=torch.long)
    fold[torch.randperm(n_total, generator=g)] = torch.arange(n_total) % n_folds
    test = fold.unsqueeze(0) == torch.arange(n_folds).unsqueeze(1)  # (F, N)
    train = (~test).float()
    h = hidden or 10 * d
    params = [*_init(g, n_folds, d, h), *_init(g, n_folds, h, h), *_init(g, n_folds, h, 1)]
    w1, b1, w2, b2, w3, b3 = params
    opt = adam(params, lr)

    def logits(rows: Tensor) -> Tensor:
        z = torch.relu(torch.baddbmm(b1, x[rows].expand(n_folds, -1, -1), w1))
        z = torch.relu(torch.baddbmm(b2, z, w2))
        return torch.baddbmm(b3, z, w3).squeeze(-1)  # (F, rows)

    # every fold sees the same minibatch of rows and masks out its own test rows, so the
    # n_folds networks train side by side in one batched pass
    best, stale = float("inf"), 0
    size = min(batch_size, n_total)
    steps = max(math.ceil(n_total / size), 10)
    for _ in range(max_epochs):
        total = torch.zeros(())
        order = torch.cat([torch.randperm(n_total, generator=g) for _ in range(math.ceil(steps * size / n_total))])
        for rows in order[: steps * size].split(size):
            mask = train[:, rows]
            opt.zero_grad(set_to_none=True)
            bce = F.binary_cross_entropy_with_logits(logits(rows), y[rows].expand(n_folds, -1), reduction="none")
            data_loss = ((bce * mask).sum(1) / mask.sum(1).clamp_min(1)).sum()
            loss = data_loss + weight_decay / 2 * sum((w * w).sum() for w in (w1, w2, w3)) * rows.numel() / n_total
            loss.backward()
            opt.step()
            total = total + data_loss.detach() * rows.numel()
        value = float(total) / (steps * size)
        if value < best - tol:
            best, stale = value, 0
        else:
            stale += 1
            if stale >= patience:
                break
    with torch.no_grad():
        everything = torch.arange(n_total)
        correct = torch.cat([((logits(r) > 0).float() == y[r]).float() for r in everything.split(8192)], 1)
        acc = (correct * test).sum(1) / test.sum(1)
    return acc if return_folds else float(acc.mean())
