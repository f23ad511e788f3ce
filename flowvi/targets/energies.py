"""2-D energies ``p(z) ∝ exp(-U(z))``: U1-U4 of Rezende & Mohamed (2015, Table 1) and
the "two moons" energy common in the flow literature (e.g. the ``normflows`` package).

With ``w1 = sin(2 pi z1 / 4)``, ``w2 = 3 exp(-((z1 - 1) / 0.6)^2 / 2)``,
``w3 = 3 sigmoid((z1 - 1) / 0.3)``:

* U1 = ((|z| - 2) / 0.4)^2 / 2 - log(exp(-((z1 - 2) / 0.6)^2 / 2) + exp(-((z1 + 2) / 0.6)^2 / 2))
* U2 = ((z2 - w1) / 0.4)^2 / 2
* U3 = -log(exp(-((z2 - w1) / 0.35)^2 / 2) + exp(-((z2 - w1 + w2) / 0.35)^2 / 2))
* U4 = -log(exp(-((z2 - w1) / 0.4)^2 / 2) + exp(-((z2 - w1 + w3) / 0.35)^2 / 2))
* two moons = ((|z| - 2) / 0.2)^2 / 2 + ((|z1| - 2) / 0.3)^2 / 2 - log(1 + exp(-4 |z1| / 0.09))

U2-U4 do not decay along ``z1`` (the paper shows them on a box), so here they get
a wall ``((|z1| - 4)_+ / 0.2)^2 / 2``: they are exactly the paper's energies on
``|z1| <= 4`` (the plotted region) and proper densities on ``R^2``.

The densities are unnormalised (``log_prob = -U``). ``log_z``, ``mean`` and ``cov``
come from quadrature on a ``1401 x 1401`` grid of spacing ``h = 0.01`` over
``[-7, 7]^2``, computed once on first use (about a second). The integrands are
negligible at the box's edge and smooth (the walls' second derivative jumps at
``|z1| = 4``, a grid line), so the rule converges fast: repeating it at spacing ``2h``
changes ``log_z``, ``mean`` and ``cov`` by less than ``1e-12`` for U1 and two moons
and by about ``3e-8`` for the walled U2-U4 (``log_z_error`` holds that change for
each energy, a conservative bound on the error at ``h``; ``edge_mass``, the
normalised mass on the box's boundary nodes, is below ``1e-19`` for all five).
``sample`` draws grid cells with probability proportional to the density at their
centre and then a uniform point inside the cell: exact up to the grid's resolution
(``h = 0.01``; it adds ``h^2 / 12 ≈ 8e-6`` to each variance).
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .base import Target

BOX = 7.0  # half-width of the quadrature box
STEP = 0.01  # grid spacing


def _w1(z1: Tensor) -> Tensor:
    return torch.sin((math.pi / 2) * z1)


def _wall(z1: Tensor) -> Tensor:
    """``((|z1| - 4)_+ / 0.2)^2 / 2``: zero on ``|z1| <= 4``, quadratic outside."""
    return 0.5 * (torch.relu(z1.abs() - 4.0) / 0.2) ** 2


def _norm(z: Tensor) -> Tensor:
    # sqrt(z1^2 + z2^2) with a finite gradient at 0 (hypot's is NaN there)
    return torch.sqrt((z * z).sum(-1) + torch.finfo(z.dtype).tiny)


def u1(z: Tensor) -> Tensor:
    """Rezende & Mohamed's U1 (a ring with two lobes): ``(..., 2) -> (...)``."""
    z1 = z[..., 0]
    return 0.5 * ((_norm(z) - 2) / 0.4) ** 2 - torch.logaddexp(-0.5 * ((z1 - 2) / 0.6) ** 2, -0.5 * ((z1 + 2) / 0.6) ** 2)


def u2(z: Tensor) -> Tensor:
    """Rezende & Mohamed's U2 (a sine wave), walled at ``|z1| > 4``: ``(..., 2) -> (...)``."""
    z1, z2 = z[..., 0], z[..., 1]
    return 0.5 * ((z2 - _w1(z1)) / 0.4) ** 2 + _wall(z1)


def u3(z: Tensor) -> Tensor:
    """Rezende & Mohamed's U3 (a split sine wave), walled at ``|z1| > 4``: ``(..., 2) -> (...)``."""
    z1, z2 = z[..., 0], z[..., 1]
    w1, w2 = _w1(z1), 3 * torch.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    return -torch.logaddexp(-0.5 * ((z2 - w1) / 0.35) ** 2, -0.5 * ((z2 - w1 + w2) / 0.35) ** 2) + _wall(z1)


def u4(z: Tensor) -> Tensor:
    """Rezende & Mohamed's U4 (a sine wave and its step-shifted copy), walled at ``|z1| > 4``: ``(..., 2) -> (...)``."""
    z1, z2 = z[..., 0], z[..., 1]
    w1, w3 = _w1(z1), 3 * torch.sigmoid((z1 - 1) / 0.3)
    return -torch.logaddexp(-0.5 * ((z2 - w1) / 0.4) ** 2, -0.5 * ((z2 - w1 + w3) / 0.35) ** 2) + _wall(z1)


def two_moons(z: Tensor) -> Tensor:
    """The two-moons energy (two arcs of the circle ``|z| = 2`` about ``z1 = +-2``): ``(..., 2) -> (...)``."""
    a = z[..., 0].abs()
    return (0.5 * ((_norm(z) - 2) / 0.2) ** 2 + 0.5 * ((a - 2) / 0.3) ** 2
            - torch.nn.functional.softplus(-4 * a / 0.09))


ENERGIES = {"u1": u1, "u2": u2, "u3": u3, "u4": u4, "two-moons": two_moons}


def _moments(lp: Tensor, g: Tensor, step: int = 1):
    """Log mass, mean (2,) and cov (2, 2) of ``exp(lp)`` on the grid ``g x g`` (every ``step``-th node)."""
    lp, g = lp[::step, ::step], g[::step]
    h = float(g[1] - g[0])
    m = lp.max()
    w = (lp - m).exp()
    mass = w.sum()
    p = w / mass
    p1, p2 = p.sum(1), p.sum(0)  # marginals on the nodes
    mean = torch.stack([p1 @ g, p2 @ g])
    c1, c2 = g - mean[0], g - mean[1]
    v11, v22, v12 = p1 @ c1**2, p2 @ c2**2, c1 @ p @ c2
    cov = torch.stack([torch.stack([v11, v12]), torch.stack([v12, v22])])
    return float(m + torch.log(mass * h * h)), mean, cov, p


class Energy2D(Target):
    """Unnormalised 2-D density ``exp(-U(z))`` for ``U`` one of ``ENERGIES``; see the module docstring.

    Args:
        which: ``"u1"``, ``"u2"``, ``"u3"``, ``"u4"`` or ``"two-moons"``.
        name: registry name; ``which`` by default.

    ``log_prob``: ``(..., 2) -> (...)``, ``= -U`` (``normalised = False``). ``log_z``,
    ``mean`` (2,), ``cov`` (2, 2), ``log_z_error`` and ``edge_mass``: by quadrature,
    computed on first use. ``sample(n)``: ``(n, 2)``, exact to the grid's 0.01 resolution.
    """

    normalised = False

    def __init__(self, which: str = "u1", name: str | None = None):
        if which not in ENERGIES:
            raise ValueError(f"unknown energy {which!r}; choose one of {sorted(ENERGIES)}")
        super().__init__(2)
        self.which, self.energy = which, ENERGIES[which]
        self.name = name or which

    def _log_prob(self, x: Tensor) -> Tensor:
        return -self.energy(x)

    @functools.cached_property
    def _quad(self) -> dict:
        n = int(round(2 * BOX / STEP)) + 1
        g = torch.linspace(-BOX, BOX, n, dtype=torch.float64)
        with torch.no_grad():
            lp = self.log_prob(torch.stack(torch.meshgrid(g, g, indexing="ij"), -1))
        log_z, mean, cov, p = _moments(lp, g)
        log_z2, mean2, cov2, _ = _moments(lp, g, step=2)
        edge = float(p[0].sum() + p[-1].sum() + p[1:-1, 0].sum() + p[1:-1, -1].sum())
        err = max(abs(log_z - log_z2), float((mean - mean2).abs().max()), float((cov - cov2).abs().max()))
        return dict(g=g, cdf=torch.cumsum(p.reshape(-1), 0), log_z=log_z, mean=mean, cov=cov,
                    log_z_error=err, edge_mass=edge)

    @property
    def log_z(self) -> float:
        """Log normaliser of ``exp(log_prob)``, by quadrature (``log_z_error`` bounds its error)."""
        return self._quad["log_z"]

    @property
    def log_z_error(self) -> float:
        """Largest change in ``log_z``, ``mean`` or ``cov`` when the grid spacing is doubled: a conservative error bound."""
        return self._quad["log_z_error"]

    @property
    def edge_mass(self) -> float:
        """Normalised mass on the quadrature box's boundary nodes (how much the box could be cutting off)."""
        return self._quad["edge_mass"]

    @property
    def mean(self) -> Tensor:
        """``(2,)`` float64 mean, by quadrature."""
        return self._quad["mean"]

    @property
    def cov(self) -> Tensor:
        """``(2, 2)`` float64 covariance, by quadrature."""
        return self._quad["cov"]

    def _sample(self, n, gen):
        q = self._quad
        g, cdf = q["g"], q["cdf"]
        u = torch.rand(n, generator=gen, dtype=torch.float64) * cdf[-1]
        idx = torch.searchsorted(cdf, u).clamp_(max=cdf.numel() - 1)
        m = g.numel()
        centre = torch.stack([g[idx // m], g[idx % m]], -1)
        return centre + STEP * (torch.rand(n, 2, generator=gen, dtype=torch.float64) - 0.5)
