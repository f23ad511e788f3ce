"""Training losses for posterior estimation, per row of a batch (shape ``(B,)``).

* ``npe_loss``: ``-log q(theta_i | x_i)``; right when every theta was drawn from the prior.
* ``atomic_loss``: SNPE-C / APT (Greenberg et al. 2019). For proposals other than
  the prior, each pair ``(theta_i, x_i)`` is scored against ``num_atoms - 1``
  contrasting parameters drawn (without replacement) from the other rows of the
  batch; with logits ``l_ij = log q(theta_j | x_i) - log p(theta_j)``,
  ``loss_i = -log softmax_j(l_ij)[i]``. Its minimiser is the true posterior for
  any proposal (or mixture of proposals) whose support covers it, so no
  importance weights or proposal densities are needed.

Both work on the standardised unbounded ``z`` the estimator's flow models;
``prior_lp`` is ``PosteriorEstimator.prior_log_prob_z(z)`` (its constant offset
cancels inside the softmax).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .estimator import PosteriorEstimator


def npe_loss(est: PosteriorEstimator, z: Tensor, x: Tensor) -> Tensor:
    """``-log q_flow(z_i | x_i)`` for ``z (B, d)``, ``x (B, *x_shape)``; returns ``(B,)``."""
    return -est.log_prob_z(z, est.context(x))


def atom_indices(batch: int, num_atoms: int, generator: torch.Generator | None = None) -> Tensor:
    """``(num_atoms, batch)`` row indices: row 0 is ``arange(batch)`` (the true pairs), rows
    1.. are distinct other rows of the batch, sampled without replacement, never the row itself."""
    if num_atoms < 2:
        raise ValueError(f"num_atoms must be >= 2, got {num_atoms}")
    if batch < num_atoms:
        raise ValueError(f"the atomic loss needs a batch of at least num_atoms={num_atoms} rows, got {batch}")
    # an offset in 1..B-1 added modulo B picks a row other than i; distinct offsets give distinct atoms
    keys = torch.rand(batch, batch - 1, generator=generator)
    offsets = keys.argsort(1)[:, : num_atoms - 1] + 1
    own = torch.arange(batch)
    others = (own.unsqueeze(1) + offsets) % batch
    return torch.cat([own.unsqueeze(1), others], 1).T.contiguous()


def atomic_loss(
    est: PosteriorEstimator,
    z: Tensor,
    x: Tensor,
    prior_lp: Tensor,
    num_atoms: int = 10,
    generator: torch.Generator | None = None,
    combined: Tensor | None = None,
) -> Tensor:
    """APT atomic loss per row, ``(B,)``.

    Args:
        z: standardised unbounded parameters ``(B, d)``.
        x: data ``(B, *x_shape)``.
        prior_lp: ``est.prior_log_prob_z(z)``, ``(B,)``.
        num_atoms: atoms per row including the true one (capped at ``B``).
        generator: RNG for the choice of atoms.
        combined: optional bool ``(B,)``: rows (e.g. drawn from the prior) that also
            get the plain NPE loss added (Greenberg et al.'s combined loss).
    """
    idx = atom_indices(z.shape[0], min(num_atoms, z.shape[0]), generator)  # (A, B)
    context = est.context(x)  # embed each x once; atoms share it
    lq = est.log_prob_z(z[idx], context)  # (A, B): log q(theta_{idx[a,i]} | x_i)
    logits = lq - prior_lp[idx]
    loss = logits.logsumexp(0) - logits[0]
    if combined is not None:
        loss = loss - torch.where(combined, lq[0], torch.zeros_like(lq[0]))
    return loss
