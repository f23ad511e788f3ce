"""Pyro model and guide for a ``VAE``, so ``pyro.infer.SVI`` trains it with a flow posterior.

The guide samples z from the flow distribution q(z|x); Pyro then scores that draw
with ``log_prob``, which a ``FlowDistribution`` answers from its own sampling pass
(no inverse), so planar/Sylvester posteriors work too.
"""
from __future__ import annotations

import pyro
import pyro.distributions as pdist
import torch
from torch import Tensor


class PyroVAEMixin:
    """Adds ``pyro_model(x)`` and ``pyro_guide(x)`` to ``VAE`` (sites ``"z"`` and ``"x"``)."""

    def pyro_model(self, x: Tensor, beta: float = 1.0) -> Tensor:
        """p(z) p(x|z) over a data plate of size B; ``x`` (B, x_dim). Returns z (B, z_dim).

        ``beta`` scales the z site (KL warm-up under SVI: scaling log p(z) in the
        model and log q(z|x) in the guide by the same ``beta`` gives ``beta * KL``).
        """
        x = self.check_x(x)
        pyro.module("vae_decoder", self.decoder)
        zero = torch.zeros(self.z_dim, dtype=x.dtype, device=x.device)
        with pyro.plate("data", x.shape[0]):
            with pyro.poutine.scale(scale=float(beta)):
                z = pyro.sample("z", pdist.Normal(zero, torch.ones_like(zero)).to_event(1))
            pyro.sample("x", self.decoder.distribution(z), obs=x)
        return z

    def pyro_guide(self, x: Tensor, beta: float = 1.0) -> Tensor:
        """q(z|x) over the same data plate; samples z (B, z_dim) from the flow."""
        x = self.check_x(x)
        pyro.module("vae_encoder", self.encoder)
        pyro.module("vae_flow", self.flow)
        q = self.flow(self.encoder(x))
        with pyro.plate("data", x.shape[0]), pyro.poutine.scale(scale=float(beta)):
            return pyro.sample("z", q)
