"""Well-separated Gaussian mixtures (a multimodal test for mode-seeking reverse KL).

``GaussianMixture(dim, k, separation, scale, weights, seed)``: ``k`` isotropic
components ``N(mu_j, scale^2 I)`` whose means all lie on a sphere about the origin
(no mode is favoured by a start at 0) with pairwise distances at least
``separation * scale``:

* ``dim == 2``: the means are evenly spaced on a circle, randomly turned by ``seed``;
* ``k <= 2 dim``: they are ``k`` of the vertices ``+-r q_i`` of a cross-polytope, ``q``
  a seeded random rotation (pairwise distance ``r sqrt 2`` or ``2 r``);
* otherwise: drawn uniformly on the sphere, rejecting any closer than the separation,
  with the radius grown until ``k`` fit.

Density, sampler and moments are exact: ``mean = sum_j w_j mu_j`` and
``cov = scale^2 I + sum_j w_j (mu_j - mean)(mu_j - mean)^T``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import LOG_2PI, Target, random_rotation


def _means(dim: int, k: int, sep: float, seed: int) -> Tensor:
    """``(k, dim)`` float64 component means with pairwise distance >= ``sep``, on a sphere about 0."""
    g = torch.Generator().manual_seed(int(seed))
    if k == 1:
        return torch.zeros(1, dim, dtype=torch.float64)
    if dim == 1:
        if k > 2:
            raise ValueError("in 1-D at most 2 components can sit symmetrically about 0")
        return torch.tensor([[-sep / 2], [sep / 2]], dtype=torch.float64)
    if dim == 2:
        r = sep / (2 * math.sin(math.pi / k))
        a = 2 * math.pi * (torch.arange(k, dtype=torch.float64) / k + torch.rand(1, generator=g, dtype=torch.float64))
        return r * torch.stack([a.cos(), a.sin()], -1)
    if k <= 2 * dim:
        q = random_rotation(dim, seed).T  # rows: orthonormal directions
        r = sep / 2 if k == 2 else sep / math.sqrt(2)
        signs = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(dim)
        dirs = q.repeat_interleave(2, 0) * signs[:, None]  # +q1, -q1, +q2, -q2, ...
        if k > 2:  # spread the first k over distinct axes before using antipodes
            order = list(range(0, 2 * dim, 2)) + list(range(1, 2 * dim, 2))
            dirs = dirs[order]
        return r * dirs[:k]
    r = sep
    while True:
        pts = []
        for _ in range(200 * k):
            u = torch.randn(dim, generator=g, dtype=torch.float64)
            p = r * u / u.norm()
            if all(float((p - q).norm()) >= sep for q in pts):
                pts.append(p)
                if len(pts) == k:
                    return torch.stack(pts)
        r *= 1.25


class GaussianMixture(Target):
    """Mixture of ``k`` isotropic Gaussians on ``R^dim``; see the module docstring.

    Args:
        dim: dimension.
        k: number of components.
        separation: least distance between two means, in units of ``scale``.
        scale: every component's standard deviation.
        weights: ``(k,)`` mixing weights (normalised here); equal by default.
        seed: fixes the placement of the means.
        name: registry name; a descriptive default otherwise.

    Attributes: ``means`` ``(k, dim)``, ``weights`` ``(k,)``, ``k``, ``scale``.
    ``log_prob``: ``(..., dim) -> (...)`` (a logsumexp, finite far out);
    ``sample(n)``: ``(n, dim)``, exact.
    """

    def __init__(self, dim: int = 2, k: int = 4, separation: float = 8.0, scale: float = 1.0,
                 weights=None, seed: int = 0, name: str | None = None):
        if k < 1:
            raise ValueError(f"need k >= 1 components, got {k}")
        super().__init__(dim)
        self.k, self.scale = int(k), float(scale)
        self.means = _means(self.dim, self.k, float(separation) * self.scale, seed)
        w = torch.ones(self.k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (self.k,) or not torch.all(w > 0):
            raise ValueError(f"weights must be {self.k} positive numbers, got {weights}")
        self.weights = w / w.sum()
        self.name = name or f"mixture(d={dim}, k={k}, sep={separation:g})"
        self.mean = self.weights @ self.means
        c = self.means - self.mean
        self.cov = self.scale**2 * torch.eye(self.dim, dtype=torch.float64) + (c.T * self.weights) @ c
        self._log_w = self.weights.log()

    def _log_prob(self, x: Tensor) -> Tensor:
        d = (x.unsqueeze(-2) - self.means.to(x.dtype)) / self.scale  # (..., k, dim)
        comp = -0.5 * (d * d).sum(-1) + self._log_w.to(x.dtype)
        return torch.logsumexp(comp, -1) - self.dim * (math.log(self.scale) + 0.5 * LOG_2PI)

    def _sample(self, n, gen):
        idx = torch.multinomial(self.weights, n, replacement=True, generator=gen)
        return self.means[idx] + self.scale * torch.randn(n, self.dim, generator=gen, dtype=torch.float64)
