"""The model's joint log density over the unconstrained latent vector of an ``AutoFlow``.

``JointDensity(guide, args, kwargs)(u)`` maps ``u`` of shape ``(n, D)`` (``D`` =
``guide.latent_dim``) to ``log p(x, T(u)) + log|det dT/du|`` of shape ``(n,)``,
where ``T`` applies ``biject_to(support)`` site by site.  All ``n`` particles go
through one run of the model, under an extra plate left of every model plate,
so the cost per step is one Pyro trace of the model (no guide trace).
"""
from __future__ import annotations

import warnings

import pyro
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from torch import Tensor

_PLATE = "_flowvi_particles"


def _per_particle(t: Tensor, n: int, right: int | None) -> Tensor:
    """Sum ``t`` over every dim except the particle dim, which sits ``right`` dims
    from the right; a tensor without that dim does not depend on the particle.
    ``right=None``: there is no particle dim (one particle), sum everything."""
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t)
    if right is None or t.dim() <= right:
        return t.sum().expand(n)
    axis = t.dim() - right - 1
    t = t.sum(dim=tuple(range(axis + 1, t.dim()))) if right else t
    t = t.sum(dim=tuple(range(axis))) if axis else t
    return t.expand(n)


def plate_nesting(trace) -> int:
    """How many batch dims the model uses at most: plates, and undeclared batch
    dims of a distribution, must all stay right of the particle plate."""
    nest = 0
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        dims = [-f.dim for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None]
        nest = max(nest, len(getattr(site["fn"], "batch_shape", ())), *dims)
    return nest


def latent_shapes(trace) -> dict[str, tuple]:
    """Name -> value shape of every latent sample site of a model trace."""
    return {
        name: tuple(site["value"].shape)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not _is_subsample(site)
    }


def _is_subsample(site) -> bool:
    return type(site["fn"]).__name__ == "_Subsample"


class JointDensity:
    """Unnormalised log posterior over ``R^D`` for ``flowvi.fit`` (see module doc).

    Args:
        guide: an ``AutoFlow`` whose prototype has been set up on ``args``/``kwargs``.
        args, kwargs: the model's arguments (data).
        model_trace: a full trace of the model on these arguments (observed sites
            included: their plates count too); traced here when omitted.
        vectorize: evaluate all particles in one model run (True), one run per
            particle (False), or decide on the first call by comparing both (None).
    """

    def __init__(self, guide, args: tuple, kwargs: dict, model_trace=None, vectorize: bool | None = None):
        self.guide, self.args, self.kwargs = guide, tuple(args), dict(kwargs)
        self.vectorize = vectorize
        self.model = guide.model
        if model_trace is None:
            with torch.no_grad():
                model_trace = poutine.trace(self.model).get_trace(*self.args, **self.kwargs)
        self.nesting = plate_nesting(model_trace)
        self.shapes = {name: tuple(site["value"].shape) for name, site in guide.prototype_trace.iter_stochastic_nodes()}

    def constrain(self, u: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Site values in constrained space and the summed log-Jacobian.

        ``u``: ``(n, D)``.  Returns ``{name: (n, *1s, *site_shape)}`` (values broadcast
        under the particle plate) and ``log|det dT/du|`` of shape ``(n,)``.
        """
        n, p = u.shape[0], self.nesting
        latent = u.reshape((n,) + (1,) * p + (u.shape[-1],))
        values, ldj = {}, u.new_zeros(n)
        for site, uv in self.guide._unpack_latent(latent):
            t = biject_to(site["fn"].support)
            x = t(uv)
            values[site["name"]] = x
            # uv is (n, *1s, *plate dims (p in all), *unconstrained event): the
            # particle dim has p + (event dims not reduced by the Jacobian) on its right
            u_event = uv.dim() - p - 1
            ldj = ldj + _per_particle(t.log_abs_det_jacobian(uv, x), n, p + u_event - t.domain.event_dim)
        return values, ldj

    def site_values(self, u: Tensor) -> dict[str, Tensor]:
        """``{name: (n, *site_shape)}`` constrained values for ``u`` of shape ``(n, D)``."""
        values, _ = self.constrain(u)
        n = u.shape[0]
        return {k: v.reshape((n,) + self.shapes[k]) for k, v in values.items()}

    def __call__(self, u: Tensor) -> Tensor:
        """``(n, D) -> (n,)``: log p(data, T(u)) + log|det J_T(u)|."""
        if self.vectorize is None:
            self.vectorize = self._vectorizes(u.detach())
        return self._vectorized(u) if self.vectorize else self._looped(u)

    def _vectorized(self, u: Tensor) -> Tensor:
        n, p = u.shape[0], self.nesting
        values, ldj = self.constrain(u)
        with pyro.plate(_PLATE, n, dim=-(p + 1)):
            trace = poutine.trace(poutine.condition(self.model, data=values)).get_trace(*self.args, **self.kwargs)
        return ldj + self._score(trace, values, n, p)

    def _looped(self, u: Tensor) -> Tensor:
        # one model run per particle, for model code that assumes unbatched latents
        out = []
        for i in range(u.shape[0]):
            values, ldj = self.constrain(u[i : i + 1])
            values = {k: v.reshape(self.shapes[k]) for k, v in values.items()}
            trace = poutine.trace(poutine.condition(self.model, data=values)).get_trace(*self.args, **self.kwargs)
            out.append(ldj + self._score(trace, values, 1, None))
        return torch.cat(out)

    def _vectorizes(self, u: Tensor) -> bool:
        """Whether the model gives the same densities batched over particles as one
        particle at a time (model code such as ``X @ beta`` breaks under a batch)."""
        u = u[:3]
        with torch.no_grad():
            want = self._looped(u)  # raises the structural errors, if any
            try:
                got = self._vectorized(u)
                ok = got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-3)
            except Exception:  # any failure of the batched run means: not vectorisable
                ok = False
        if not ok:
            warnings.warn(
                "the model does not vectorise over particles (write e.g. `(X * beta).sum(-1)`, "
                "not `X @ beta`, so that a leading batch of draws broadcasts): fit_pyro runs it once "
                "per particle, which is much slower", stacklevel=3,
            )
        return ok

    def _score(self, trace, values: dict, n: int, p: int) -> Tensor:
        """Sum of every site's (scaled, masked) log-density, per particle: ``(n,)``."""
        total = 0.0
        seen = set()
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or _is_subsample(site):
                continue
            if not site["is_observed"] or name in values:
                if name not in values:
                    raise ValueError(
                        f"the model drew latent site {name!r}, which its first run did not have: fit_pyro "
                        "needs a static structure (the same latent sites with the same shapes on every run)"
                    )
                seen.add(name)
                want = values[name].shape
                if torch.broadcast_shapes(site["fn"].shape(), want) != want:
                    raise ValueError(
                        f"site {name!r} changed shape: its distribution now has shape {tuple(site['fn'].shape())[-len(self.shapes[name]) or None:]} "
                        f"but it was {self.shapes[name]} on the first run; fit_pyro needs static shapes"
                    )
            lp = site["fn"].log_prob(site["value"])
            mask = site.get("mask")
            if mask is not None:  # poutine.mask: masked-out terms count zero
                lp = torch.where(torch.as_tensor(mask, device=lp.device), lp, lp.new_zeros(()))
            scale = site.get("scale", 1.0)
            if not (isinstance(scale, (int, float)) and scale == 1.0):
                lp = lp * scale
            total = total + _per_particle(lp, n, p)
        missing = set(values) - seen
        if missing:
            raise ValueError(f"the model did not draw latent site(s) {sorted(missing)} this time: fit_pyro needs a static structure")
        return total
