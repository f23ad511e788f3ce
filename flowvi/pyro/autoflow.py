"""``AutoFlow``: a Pyro autoguide whose posterior over all global latents is a flowvi flow.

A drop-in for ``AutoNormal`` / ``AutoIAFNormal`` wherever Pyro's ``AutoContinuous``
guides work: constrained sites go through ``biject_to`` (Pyro's ``AutoContinuous``
adds that Jacobian), the flow starts at ``init_loc_fn``'s point with a small scale,
``median()`` and ``quantiles()`` work (by sampling), and log q of each draw comes
from the sampling pass, so IAF, planar and Sylvester need no inverse inside SVI.
"""
from __future__ import annotations

from typing import Sequence

import torch
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median

from ..flows import FlowDistribution, build


class AutoFlow(AutoContinuous):
    """Flow guide over the concatenated unconstrained latents.

    Args:
        model: a Pyro model whose latent sites are continuous and global (not
            inside a subsampled plate).
        family: flowvi family (``flowvi.flows.family_names()``).
        layers, hidden: size of the flow; an LU-linear and an elementwise affine
            layer follow the family layers.
        init_loc_fn: Pyro per-site initialisation; the flow starts there.
        init_scale: initial standard deviation of every unconstrained coordinate.
    """

    def __init__(
        self,
        model,
        family: str = "iaf",
        layers: int = 4,
        hidden: Sequence[int] = (64, 64),
        init_loc_fn=init_to_median,
        init_scale: float = 0.1,
        **flow_kwargs,
    ):
        self.family, self.layers, self.hidden = family, int(layers), tuple(hidden)
        self.init_scale, self.flow_kwargs = float(init_scale), flow_kwargs
        super().__init__(model, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            if not site["fn"].has_rsample and site["fn"].support.is_discrete:
                raise ValueError(f"site {name!r} is discrete; AutoFlow handles continuous latents only (enumerate or marginalise it)")
            for frame in site["cond_indep_stack"]:
                if frame.vectorized and frame.size != frame.full_size:
                    raise ValueError(
                        f"site {name!r} is a local latent inside the subsampled plate {frame.name!r} "
                        f"(subsample {frame.size} of {frame.full_size}): a global flow over it would change "
                        "size with every subsample. Use an amortized (encoder + conditional flow) guide for local latents."
                    )
        init = self._init_loc()
        self.flow = build(
            [self.family] * self.layers + ["lu"], self.latent_dim, hidden=self.hidden, final_affine=True, **self.flow_kwargs
        ).to(dtype=init.dtype, device=init.device)
        self.flow.layers[-1].set_loc_scale(init, torch.full_like(init, self.init_scale))

    def get_posterior(self, *args, **kwargs) -> FlowDistribution:
        """The flow distribution over the unconstrained latent vector."""
        return self.flow()

    @torch.no_grad()
    def _constrained_draws(self, num_samples: int, seed: int) -> dict[str, torch.Tensor]:
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            latent = self.flow.sample((num_samples,))
        finally:
            torch.set_rng_state(state)
        return {site["name"]: biject_to(site["fn"].support)(u) for site, u in self._unpack_latent(latent)}

    def median(self, *args, num_samples: int = 2000, seed: int = 0, **kwargs) -> dict[str, torch.Tensor]:
        """Per-site posterior medians (constrained space), from ``num_samples`` seeded draws."""
        if not hasattr(self, "flow"):
            self._setup_prototype(*args, **kwargs)
        return {k: v.median(0).values for k, v in self._constrained_draws(num_samples, seed).items()}

    def quantiles(self, quantiles, *args, num_samples: int = 2000, seed: int = 0, **kwargs) -> dict[str, torch.Tensor]:
        """Per-site quantiles (constrained space); each value has a leading ``len(quantiles)`` dim."""
        if not hasattr(self, "flow"):
            self._setup_prototype(*args, **kwargs)
        q = torch.as_tensor(quantiles, dtype=torch.get_default_dtype())
        return {k: torch.quantile(v, q.to(v.dtype), dim=0) for k, v in self._constrained_draws(num_samples, seed).items()}
