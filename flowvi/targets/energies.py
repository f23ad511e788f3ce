"""2-D energies p(z) ∝ exp(-U(z)) of Rezende & Mohamed 2015 (U1-U4) and the
two-moons energy common in the flow literature.

They are unnormalised: ``log_z``, ``mean`` and ``cov`` come from trapezoid
quadrature on a 1201 x 1201 grid over [-6, 6]^2 (computed once, on first use;
the mass outside the box is below 1e-8 for all of them), and ``sample`` draws
grid cells by their mass with uniform jitter inside the cell, so draws are exact
up to the grid spacing of 0.01.

U2-U4 do not decay along z1 in the paper (they are shown on a box); here they get
soft walls ``(z1 / 4)^8 / 2`` so they are proper densities on R^2 that match the
paper's inside |z1| < 3.
"""
from __future__ import annotations

import functools
import math

import torch

from .base import Target

BOX, GRID = 6.0, 1201


def _w1(z1):
    return torch.sin(2 * math.pi * z1 / 4)


def _wall(z1):
    return 0.5 * (z1 / 4) ** 8


def _lse2(a, b):
    return torch.logaddexp(a, b)


def u1(z):
    z1, z2 = z[..., 0], z[..., 1]
    r = torch.sqrt(z1 * z1 + z2 * z2 + 1e-30)
    return 0.5 * ((r - 2) / 0.4) ** 2 - _lse2(-0.5 * ((z1 - 2) / 0.6) ** 2, -0.5 * ((z1 + 2) / 0.6) ** 2)


def u2(z):
    return 0.5 * ((z[..., 1] - _w1(z[..., 0])) / 0.4) ** 2 + _wall(z[..., 0])


def u3(z):
    z1, z2 = z[..., 0], z[..., 1]
    w2 = 3 * torch.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    return -_lse2(-0.5 * ((z2 - _w1(z1)) / 0.35) ** 2, -0.5 * ((z2 - _w1(z1) + w2) / 0.35) ** 2) + _wall(z1)


def u4(z):
    z1, z2 = z[..., 0], z[..., 1]
    w3 = 3 * torch.sigmoid((z1 - 1) / 0.3)
    return -_lse2(-0.5 * ((z2 - _w1(z1)) / 0.4) ** 2, -0.5 * ((z2 - _w1(z1) + w3) / 0.35) ** 2) + _wall(z1)


def two_moons(z):
    z1, z2 = z[..., 0], z[..., 1]
    r = torch.sqrt(z1 * z1 + z2 * z2 + 1e-30)
    return 0.5 * ((r - 2) / 0.2) ** 2 + 0.5 * ((z1.abs() - 2) / 0.3) ** 2 - torch.nn.functional.softplus(-4 * z1 / 0.09)


ENERGIES = {"u1": u1, "u2": u2, "u3": u3, "u4": u4, "two-moons": two_moons}


class Energy2D(Target):
    """Unnormalised ``log_prob = -U(z)``; normaliser and moments by quadrature."""

    normalised = False

    def __init__(self, which: str = "u1"):
        super().__init__(2)
        if which not in ENERGIES:
            raise ValueError(f"unknown energy {which!r}; choose one of {sorted(ENERGIES)}")
        self.name, self.energy = which, ENERGIES[which]

    def log_prob(self, x):
        return -self.energy(x)

    @functools.cached_property
    def _grid(self):
        g = torch.linspace(-BOX, BOX, GRID, dtype=torch.float64)
        pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1)
        lp = self.log_prob(pts)
        m = lp.max()
        dens = (lp - m).exp()
        mass = torch.trapezoid(torch.trapezoid(dens, g, dim=1), g)
        p = dens / mass
        mean = torch.stack([torch.trapezoid(torch.trapezoid(p * pts[..., i], g, dim=1), g) for i in range(2)])
        c = pts - mean
        cov = torch.stack([torch.stack([torch.trapezoid(torch.trapezoid(p * c[..., i] * c[..., j], g, dim=1), g) for j in range(2)]) for i in range(2)])
        return g, p, float(m + mass.log()), mean, cov

    @property
    def log_z(self) -> float:
        return self._grid[2]

    @property
    def mean(self):
        return self._grid[3]

    @property
    def cov(self):
        return self._grid[4]

    def sample(self, n, seed=None):
        gen = self._generator(seed)
        g, p = self._grid[0], self._grid[1]
        h = float(g[1] - g[0])
        idx = torch.multinomial(p.reshape(-1).float(), n, replacement=True, generator=gen)
        centre = torch.stack([g[idx // GRID], g[idx % GRID]], -1)
        return centre + h * (torch.rand(n, 2, generator=gen, dtype=torch.float64) - 0.5)
