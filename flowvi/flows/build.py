"""``build``: one entry point from a family name to a ready flow distribution.

A flow is a list of layers; ``build`` only decides which list.  Stacks of
autoregressive or coupling layers get a permutation between layers, so every
coordinate is transformed and conditioned on every other.
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from .base import FlowLayer
from .distribution import Flow
from .linear import ActNorm, ElementwiseAffine, LULinear, Permutation

# name -> (factory(dim, index, context_dim, hidden, **kw) -> layer, kind of mixing between layers).
# Autoregressive layers ("ar") need a permutation between them; coupling layers
# alternate their masks, which already alternates the transformed half, and take a
# permutation only when it is random (a reversal would undo the alternation).
_Factory = Callable[..., FlowLayer]


def _planar(dim, i, context_dim, hidden, **kw):
    from .planar import Planar

    return Planar(dim, context_dim=context_dim, hidden=hidden, **kw)


def _radial(dim, i, context_dim, hidden, **kw):
    from .radial import Radial

    return Radial(dim, context_dim=context_dim, hidden=hidden, **kw)


def _sylvester(kind):
    def make(dim, i, context_dim, hidden, **kw):
        from .sylvester import Sylvester

        if kind == "triangular":
            kw.setdefault("flip", i % 2 == 1)
        return Sylvester(dim, kind=kind, context_dim=context_dim, hidden=hidden, **kw)

    return make


def _autoregressive(cheap):
    def make(dim, i, context_dim, hidden, **kw):
        from .autoregressive import AffineAutoregressive

        return AffineAutoregressive(dim, hidden=hidden, context_dim=context_dim, cheap=cheap, **kw)

    return make


def _spline_autoregressive(dim, i, context_dim, hidden, **kw):
    from .spline import SplineAutoregressive

    return SplineAutoregressive(dim, hidden=hidden, context_dim=context_dim, **kw)


def _coupling(dim, i, context_dim, hidden, **kw):
    from .coupling import AffineCoupling

    return AffineCoupling(dim, hidden=hidden, context_dim=context_dim, parity=i % 2, **kw)


def _spline_coupling(dim, i, context_dim, hidden, **kw):
    from .spline import SplineCoupling

    return SplineCoupling(dim, hidden=hidden, context_dim=context_dim, parity=i % 2, **kw)


def _affine(dim, i, context_dim, hidden, **kw):
    return ElementwiseAffine(dim, context_dim=context_dim, hidden=hidden, **kw)


def _lu(dim, i, context_dim, hidden, **kw):
    return LULinear(dim, context_dim=context_dim, hidden=hidden, **kw)


FAMILIES: dict[str, tuple[_Factory, str | None]] = {
    "planar": (_planar, None),
    "radial": (_radial, None),
    "sylvester": (_sylvester("orthogonal"), None),
    "householder": (_sylvester("householder"), None),
    "triangular": (_sylvester("triangular"), None),
    "iaf": (_autoregressive("sample"), "ar"),
    "maf": (_autoregressive("density"), "ar"),
    "realnvp": (_coupling, "coupling"),
    "nsf": (_spline_coupling, "coupling"),
    "spline-ar": (_spline_autoregressive, "ar"),
    "affine": (_affine, None),
    "lu": (_lu, None),
}
ALIASES = {
    "sylvester-orthogonal": "sylvester",
    "orthogonal": "sylvester",
    "sylvester-householder": "householder",
    "sylvester-triangular": "triangular",
    "coupling": "realnvp",
    "affine-coupling": "realnvp",
    "spline-coupling": "nsf",
    "spline-autoregressive": "spline-ar",
    "nsf-ar": "spline-ar",
}


def family_names() -> list[str]:
    """Every name ``build`` accepts (families and their aliases)."""
    return sorted([*FAMILIES, *ALIASES])


def _resolve(family: str) -> str:
    name = ALIASES.get(family.lower(), family.lower())
    if name not in FAMILIES:
        raise ValueError(f"unknown flow family {family!r}; choose one of {', '.join(family_names())}")
    return name


def build(
    family: str | Sequence[str | FlowLayer],
    dim: int,
    *,
    layers: int = 4,
    hidden: Sequence[int] = (64, 64),
    context_dim: int = 0,
    base: nn.Module | None = None,
    permute: str | None = "reverse",
    actnorm: bool = False,
    final_affine: bool = False,
    **family_kwargs,
) -> Flow:
    """Build a flow distribution over ``R^dim`` (conditional when ``context_dim > 0``).

    Args:
        family: a family name (``family_names()``), or a list mixing names and
            ready ``FlowLayer`` objects, composed in order (z -> x).
        dim: event size.
        layers: number of family layers when ``family`` is a name.
        hidden: hidden sizes of conditioner / hyper networks.
        context_dim: context size; 0 for an unconditional flow.
        base: base distribution module; standard normal by default.
        permute: ``"reverse"``, ``"random"``, ``"lu"`` or ``None``: the permutation put
            between autoregressive layers (coupling layers alternate masks, and
            take a permutation only when it is ``"random"``). ``"lu"`` puts a learnt,
            unconditional ``LULinear`` (identity at the start) between layers, after a
            reversal for autoregressive ones: it mixes coordinates, which alternating
            masks alone cannot do in 2-D (sbi's NSF does the same).
        actnorm: put an ``ActNorm`` before each family layer (density training).
        final_affine: end with an ``ElementwiseAffine`` (learnable loc/scale; for VI
            it is what a cheap Gaussian fit initialises).
        **family_kwargs: passed to each family layer (e.g. ``bins=8`` for splines).

    Returns:
        A ``Flow``: ``flow(context)`` is a Pyro ``TransformedDistribution`` with
        ``rsample_and_log_prob``; unconditional flows have the shortcuts directly.
    """
    if int(dim) < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if permute not in ("reverse", "random", "lu", None):
        raise ValueError(f"permute must be 'reverse', 'random', 'lu' or None, got {permute!r}")
    if isinstance(family, str):
        spec: list[str | FlowLayer] = [family] * int(layers)
    else:
        spec = list(family)
    out: list[FlowLayer] = []
    seed = 0
    for i, item in enumerate(spec):
        if isinstance(item, FlowLayer):
            out.append(item)
            continue
        name = _resolve(item)
        factory, mixing = FAMILIES[name]
        if actnorm:
            out.append(ActNorm(dim))
        out.append(factory(dim, i, context_dim, tuple(hidden), **family_kwargs))
        wants = (mixing == "ar" and permute) or (mixing == "coupling" and permute in ("random", "lu"))
        if wants and dim > 1 and i < len(spec) - 1:
            if permute == "lu":
                if mixing == "ar":
                    out.append(Permutation(dim, "reverse"))
                out.append(LULinear(dim))
            else:
                out.append(Permutation(dim, permute, seed=seed))
                seed += 1
    if final_affine:
        out.append(ElementwiseAffine(dim, context_dim=context_dim, hidden=tuple(hidden)))
    return Flow(out, dim=dim, context_dim=context_dim, base=base)
