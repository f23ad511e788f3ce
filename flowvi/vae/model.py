"""The amortised VAE with a flow posterior q(z|x).

q(z|x) is one conditional flowvi ``Flow`` whose context is the encoder's ``h(x)``:

* first layer: ``ElementwiseAffine`` conditioned on h through a linear map, i.e. the
  usual Gaussian head ``z0 = mu(h) + sigma(h) * eps``;
* then ``flow_layers`` layers of ``family``, all with ``context_dim = h size``.
  For IAF / RealNVP / NSF the context feeds the conditioner networks (Kingma et
  al. 2016); for planar / Sylvester / Householder / triangular the layer's
  parameters are emitted per datapoint from h by a hypernetwork, linear by default
  (Rezende & Mohamed 2015; van den Berg et al. 2018).

The ELBO uses log q(z|x) from the sampling pass (``rsample_and_log_prob``), so
families without an inverse work, and no inverse is ever computed.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..flows import ElementwiseAffine, Flow, build
from .data import as_data_tensor
from .decoders import BernoulliDecoder, GaussianDecoder, mlp_net
from .encoders import MLPEncoder, output_size
from .pyro_interface import PyroVAEMixin

# families whose parameters come from a hypernetwork of h (linear by default, as in
# the planar/Sylvester VAE papers) vs families with a conditioner network of (z, h)
HYPERNET_FAMILIES = {"planar", "radial", "sylvester", "orthogonal", "sylvester-orthogonal", "householder",
                     "sylvester-householder", "triangular", "sylvester-triangular"}
DIAGONAL_NAMES = {None, "diagonal", "diag", "gaussian", "none"}


class VAE(PyroVAEMixin, nn.Module):
    """A VAE ``p(z) p(x|z)`` with amortised flow posterior ``q(z|x)``.

    Args:
        x_dim: data size.
        z_dim: latent size.
        family: flow family on top of the diagonal Gaussian (``"iaf"``, ``"planar"``,
            ``"sylvester"``, ``"householder"``, ``"triangular"``, ``"realnvp"``,
            ``"nsf"``, any ``flowvi.flows.family_names()``), or ``None`` for the
            plain diagonal-Gaussian VAE.
        flow_layers: number of flow layers.
        hidden: hidden sizes of the default MLP encoder and (mirrored) decoder.
        gated: the default MLPs use gated units (``GatedLinear``, as in Tomczak &
            Welling's VAE experiments) instead of softplus layers.
        likelihood: ``"bernoulli"`` (0/1 data) or ``"gaussian"``.
        encoder: any module ``(B, x_dim) -> (B, h_dim)``; default ``MLPEncoder``.
        decoder: a ``BernoulliDecoder``/``GaussianDecoder``, or any module
            ``(*, z_dim) -> (*, x_dim)`` (logits or means) wrapped in the
            ``likelihood``'s decoder; default MLP.
        flow_hidden: hidden sizes of the flow's conditioner/hyper networks; default
            ``()`` (linear in h) for hypernetwork families and
            ``(4 z_dim, 4 z_dim)`` for IAF/coupling/spline families.
        decoder_scale: Gaussian likelihood only: a float fixes sigma, ``None`` learns it.
        amortize_flow: ``True``: the flow layers read ``h(x)`` (conditioners / per-datapoint
            parameters). ``False``: only the Gaussian head is amortised and the flow layers
            are shared by every datapoint, as in Pyro's IAF-VAE example.
        **flow_kwargs: passed to each family layer (e.g. ``m=`` for orthogonal
            Sylvester, ``num_householder=``, ``bins=``).

    Shapes: ``x`` is (B, x_dim); per-datapoint outputs are (B,), per-sample (S, B).
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        family: str | None = "iaf",
        flow_layers: int = 4,
        hidden: Sequence[int] = (300, 300),
        likelihood: str = "bernoulli",
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        flow_hidden: Sequence[int] | None = None,
        decoder_scale: float | None = None,
        amortize_flow: bool = True,
        gated: bool = False,
        **flow_kwargs,
    ):
        super().__init__()
        self.x_dim, self.z_dim = int(x_dim), int(z_dim)
        if self.x_dim < 1 or self.z_dim < 1:
            raise ValueError(f"x_dim and z_dim must be positive, got {x_dim!r}, {z_dim!r}")
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        self.encoder = encoder if encoder is not None else MLPEncoder(self.x_dim, hidden, gated=gated)
        self.h_dim = output_size(self.encoder, self.x_dim)

        if isinstance(decoder, (BernoulliDecoder, GaussianDecoder)):
            self.decoder = decoder
        else:
            net = decoder if decoder is not None else mlp_net(self.z_dim, self.x_dim, tuple(reversed(tuple(hidden))), gated=gated)
            if likelihood == "bernoulli":
                self.decoder = BernoulliDecoder(net)
            else:
                self.decoder = GaussianDecoder(net, self.x_dim, scale=decoder_scale)
        self.likelihood = "bernoulli" if isinstance(self.decoder, BernoulliDecoder) else "gaussian"

        fam = family.lower() if isinstance(family, str) else family
        self.family = None if fam in DIAGONAL_NAMES else fam
        self.flow_layers = int(flow_layers) if self.family else 0
        # the Gaussian head: a linear map h -> (mu, log sigma), as in every VAE encoder
        head = ElementwiseAffine(self.z_dim, context_dim=self.h_dim, hidden=())
        if self.family is None:
            self.flow = Flow([head], dim=self.z_dim, context_dim=self.h_dim)
        else:
            if flow_hidden is None:
                flow_hidden = () if self.family in HYPERNET_FAMILIES else (4 * self.z_dim, 4 * self.z_dim)
            if amortize_flow:
                self.flow = build([head] + [self.family] * self.flow_layers, self.z_dim,
                                  hidden=tuple(flow_hidden), context_dim=self.h_dim, **flow_kwargs)
            else:
                shared = build(self.family, self.z_dim, layers=self.flow_layers, hidden=tuple(flow_hidden), **flow_kwargs)
                self.flow = Flow([head, *shared.layers], dim=self.z_dim, context_dim=self.h_dim)
        self.register_buffer("_zero", torch.zeros(()))

    # -- pieces ---------------------------------------------------------------------
    def check_x(self, x, what: str = "x") -> Tensor:
        """Validate ``x`` ((B, x_dim) or (x_dim,); finite; 0/1 for Bernoulli) and return it as (B, x_dim)."""
        t = x if isinstance(x, Tensor) else torch.as_tensor(x)
        if t.dim() == 1:
            t = t.unsqueeze(0)
        t = as_data_tensor(t, what=what, binary=self.decoder.binary, x_dim=self.x_dim)
        return t.to(self._zero.dtype)

    def log_prior(self, z: Tensor) -> Tensor:
        """log N(z; 0, I): (*, z_dim) -> (*)."""
        return -0.5 * (z**2).sum(-1) - 0.5 * self.z_dim * math.log(2 * math.pi)

    def posterior(self, x: Tensor):
        """q(z|x) as a ``FlowDistribution`` with batch shape (B,) and event (z_dim,)."""
        return self.flow(self.encoder(self.check_x(x)))

    def elbo_terms(self, x: Tensor, n_samples: int = 1) -> dict[str, Tensor]:
        """One sampling pass: ``z`` (S, B, z_dim) and ``log_px_z``, ``log_pz``, ``log_qz`` (S, B)."""
        x = self.check_x(x)
        q = self.flow(self.encoder(x))
        z, log_qz = q.rsample_and_log_prob((int(n_samples),))
        return {"z": z, "log_px_z": self.decoder.log_prob(x, z), "log_pz": self.log_prior(z), "log_qz": log_qz}

    def elbo(self, x: Tensor, n_samples: int = 1) -> Tensor:
        """Monte Carlo ELBO per datapoint (B,), averaged over ``n_samples`` draws of q."""
        t = self.elbo_terms(x, n_samples)
        return (t["log_px_z"] + t["log_pz"] - t["log_qz"]).mean(0)

    def loss(self, x: Tensor, beta: float = 1.0, free_bits: float = 0.0) -> tuple[Tensor, Tensor]:
        """Training objective (scalar, to minimise) and the batch-mean ELBO (detached).

        ``loss = -mean_B log p(x|z) + beta * max(mean_B KL, free_bits * z_dim)`` with the
        single-sample KL estimate ``log q(z|x) - log p(z)``. A flow posterior does not
        factorise over latent dimensions, so free bits floors the *total* KL (batch
        mean) at ``free_bits`` nats per dimension times ``z_dim``, rather than each
        dimension's KL as Kingma et al. (2016) do for factorised groups.
        """
        t = self.elbo_terms(x, 1)
        rec = t["log_px_z"].mean()
        kl = (t["log_qz"] - t["log_pz"]).mean()
        floor = float(free_bits) * self.z_dim
        kl_term = torch.clamp(kl, min=floor) if floor > 0 else kl
        return -rec + float(beta) * kl_term, (rec - kl).detach()

    def log_likelihood(self, x: Tensor, k: int = 1000, batch: int = 100, chunk: int = 100, seed: int = 0,
                       progress: bool = False) -> Tensor:
        """Importance-sampled (IWAE) estimate of log p(x) per datapoint (N,); see ``iwae.log_likelihood``."""
        from .iwae import log_likelihood

        return log_likelihood(self, x, k=k, batch=batch, chunk=chunk, seed=seed, progress=progress)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> Tensor:
        """``n`` draws from the model: decoder means (``mean=True``) or samples of p(x|z); (n, x_dim)."""
        z = torch.randn(int(n), self.z_dim, dtype=self._zero.dtype, device=self._zero.device)
        return self.decoder.mean(z) if mean else self.decoder.distribution(z).sample()

    def extra_repr(self) -> str:
        return (f"x_dim={self.x_dim}, z_dim={self.z_dim}, family={self.family}, flow_layers={self.flow_layers}, "
                f"likelihood={self.likelihood}")
