"""``AutoAmortizedFlow``: a Pyro guide for per-datapoint (local) latents.

For a model whose latents ``z_i`` live inside a plate over datapoints (subsampled
or not), the guide encodes each datapoint's observation ``x_i`` to a context
``c_i = encoder(x_i)`` and draws ``z_i`` from a conditional flow ``q(z_i | c_i)``.
The number of parameters does not grow with the data, and a subsample of the
plate gets the matching rows of the data (the guide opens the same plate, so the
model reuses the guide's subsample indices).

    guide = AutoAmortizedFlow(model, data_arg="x", family="iaf", context_dim=16)
    svi = SVI(model, guide, Adam({"lr": 1e-3}), Trace_ELBO())

Global latents (outside the plate) are left to another guide::

    guide = AutoGuideList(model)
    guide.append(AutoFlow(poutine.block(model, hide=["z"])))
    guide.append(AutoAmortizedFlow(poutine.block(model, expose=["z"]), data_arg="x"))
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import biject_to
from pyro.distributions.util import sum_rightmost
from pyro.infer.autoguide import AutoGuide
from torch import Tensor, nn

from ..flows import FlowDistribution, build


class AutoAmortizedFlow(AutoGuide):
    """Encoder + conditional flow guide for the latent sites inside one plate.

    Args:
        model: Pyro model; every latent site it exposes lies in the plate ``plate``
            (block global sites out and guide them with e.g. ``AutoFlow``).
        data_arg: where the per-datapoint inputs are: a position in the model's
            ``*args`` (int), a keyword name (str), or a callable
            ``(*args, **kwargs) -> Tensor`` of shape ``(N, *feature_shape)``.
            Row ``i`` must belong to datapoint ``i`` of the plate (size ``N``).
        plate: the plate's name; found automatically when the latents use one plate.
        encoder: ``nn.Module`` mapping ``(B, *feature_shape) -> (B, context_dim)``;
            default an MLP on the flattened features with ``encoder_hidden`` units.
        context_dim: size of the context (inferred from a given encoder).
        family, layers, hidden: the conditional flow (``flowvi.build``); it ends
            with a context-dependent elementwise affine layer.
        encoder_hidden: hidden sizes of the default encoder.

    Per datapoint the flow is over the concatenated unconstrained values of the
    local sites (constrained ones through ``biject_to``, Jacobian included).
    """

    def __init__(
        self,
        model: Callable,
        data_arg: int | str | Callable = 0,
        plate: str | None = None,
        encoder: nn.Module | None = None,
        context_dim: int | None = None,
        family: str = "iaf",
        layers: int = 2,
        hidden: Sequence[int] = (64, 64),
        encoder_hidden: Sequence[int] = (64,),
    ):
        self.data_arg, self.plate_name = data_arg, plate
        self.family, self.layers, self.hidden = family, int(layers), tuple(hidden)
        self.encoder_hidden = tuple(encoder_hidden)
        self.context_dim = context_dim
        super().__init__(model)
        if encoder is not None:
            self.encoder = encoder

    # -- set-up from one run of the model ----------------------------------------
    def _data(self, args, kwargs) -> Tensor:
        if callable(self.data_arg):
            data = self.data_arg(*args, **kwargs)
        elif isinstance(self.data_arg, str):
            if self.data_arg not in kwargs:
                raise ValueError(f"data_arg={self.data_arg!r} but the model was called with keywords {sorted(kwargs)}")
            data = kwargs[self.data_arg]
        else:
            if int(self.data_arg) >= len(args):
                raise ValueError(f"data_arg={self.data_arg} but the model was called with {len(args)} positional argument(s)")
            data = args[int(self.data_arg)]
        if not isinstance(data, Tensor) or data.dim() < 1:
            raise ValueError(f"data_arg must pick a tensor of shape (N, ...), got {type(data).__name__}")
        return data

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        sites = list(self.prototype_trace.iter_stochastic_nodes())
        if not sites:
            raise ValueError("the model has no latent sites for AutoAmortizedFlow to guide")
        frames = {}
        for name, site in sites:
            if site["fn"].support.is_discrete:
                raise ValueError(f"site {name!r} is discrete; AutoAmortizedFlow guides continuous latents only")
            plates = [f for f in site["cond_indep_stack"] if f.vectorized]
            if not plates:
                raise ValueError(
                    f"site {name!r} is global (in no plate): guide it with AutoFlow and give this guide only "
                    "the local sites, e.g. AutoGuideList with poutine.block(model, expose=[...local sites...])"
                )
            if len(plates) > 1:
                raise ValueError(f"site {name!r} is in nested plates {[f.name for f in plates]}; AutoAmortizedFlow supports one plate over datapoints")
            frames[name] = plates[0]
        names = {f.name for f in frames.values()}
        if self.plate_name is None and len(names) > 1:
            raise ValueError(f"local sites use several plates {sorted(names)}: pass plate=... and block the others")
        frame = next(f for f in frames.values() if self.plate_name in (None, f.name)) if frames else None
        if self.plate_name is not None and self.plate_name not in names:
            raise ValueError(f"no latent site is in plate {self.plate_name!r}; plates with latents: {sorted(names)}")
        self.frame = frame
        # per-datapoint layout: the plate's axis first, then the site's unconstrained event
        self.layout, dim = [], 0
        batch_ok = (frame.size,) + (1,) * (-frame.dim - 1)
        for name, site in sites:
            if frames[name].name != frame.name:
                raise ValueError(f"site {name!r} is in plate {frames[name].name!r}, not {frame.name!r}: block it out")
            fn, value = site["fn"], site["value"]
            batch = tuple(value.shape[: value.dim() - fn.event_dim])
            while batch and batch[0] == 1 and len(batch) > len(batch_ok):
                batch = batch[1:]
            if batch != batch_ok:
                raise ValueError(f"site {name!r} has batch shape {batch}; inside plate {frame.name!r} (dim {frame.dim}) it must be {batch_ok}")
            u = biject_to(fn.support).inv(value)
            u_event = tuple(u.shape[value.dim() - fn.event_dim :])  # biject_to may change the event rank
            size = math.prod(u_event)
            self.layout.append((name, fn.support, fn.event_dim, u_event, dim, size))
            dim += size
        self.latent_dim = dim
        data = self._data(args, kwargs)
        if data.shape[0] != frame.full_size:
            raise ValueError(
                f"data_arg gives {data.shape[0]} rows but plate {frame.name!r} has size {frame.full_size}: "
                "row i of the data must belong to datapoint i"
            )
        if not hasattr(self, "encoder"):
            feat = math.prod(data.shape[1:])
            c = int(self.context_dim or 16)
            sizes = [feat, *self.encoder_hidden, c]
            mods: list[nn.Module] = [_Rows()]
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
                mods.append(nn.Linear(a, b))
                if i < len(sizes) - 2:
                    mods.append(nn.ELU())
            self.encoder = nn.Sequential(*mods).to(dtype=data.dtype, device=data.device)
            self.context_dim = c
        else:
            with torch.no_grad():
                out = self.encoder(data[:2])
            if out.dim() != 2 or out.shape[0] != data[:2].shape[0]:
                raise ValueError(f"the encoder must map (B, ...) -> (B, context_dim); it gave {tuple(out.shape)} for B={data[:2].shape[0]}")
            self.context_dim = int(out.shape[-1])
        self.flow = build(
            [self.family] * self.layers, self.latent_dim, hidden=self.hidden, context_dim=self.context_dim, final_affine=True
        ).to(dtype=data.dtype, device=data.device)

    # -- the guide ------------------------------------------------------------------
    def posterior(self, x: Tensor) -> FlowDistribution:
        """``q(u_i | x_i)`` over the unconstrained per-datapoint vector (``latent_dim``):
        ``x`` of shape ``(B, *feature_shape)`` gives a distribution with batch shape ``(B,)``."""
        return self.flow(self.encoder(x))

    def _plate(self, args, kwargs):
        # AutoGuide's plates: shared with the other parts of an AutoGuideList, so
        # every part and the model see one subsample
        return self._create_plates(*args, **kwargs)[self.frame.name]

    def forward(self, *args, **kwargs) -> dict[str, Tensor]:
        """Draw every local site for the plate's (sub)sample; returns ``{site: value}``."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        data = self._data(args, kwargs)
        f = self.frame
        out = {}
        with self._plate(args, kwargs) as idx:
            x = data.index_select(0, idx.to(data.device)) if idx.shape[0] != data.shape[0] else data
            ctx = self.encoder(x)
            ctx = ctx.reshape((ctx.shape[0],) + (1,) * (-f.dim - 1) + (ctx.shape[-1],))
            q = self.flow(ctx)
            # one auxiliary draw carries log q(u_i | x_i); each site's Delta adds
            # its change-of-variables term, so the guide scores x = T(u) exactly
            latent = pyro.sample(f"_{self._pyro_name}_latent", q, infer={"is_auxiliary": True})
            lead = latent.shape[:-1]
            for name, support, event_dim, u_event, start, size in self.layout:
                u = latent[..., start : start + size].reshape(lead + u_event)
                t = biject_to(support)
                value = t(u)
                ld = t.inv.log_abs_det_jacobian(value, u)
                ld = sum_rightmost(ld, ld.dim() - len(lead))
                out[name] = pyro.sample(name, dist.Delta(value, log_density=ld, event_dim=event_dim))
        return out

    def median(self, *args, **kwargs):
        raise NotImplementedError("local latents have one posterior per datapoint: use guide.posterior(x) or Predictive")


class _Rows(nn.Module):
    """``(B, *feature_shape) -> (B, prod(feature_shape))`` (``(B,) -> (B, 1)``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)
