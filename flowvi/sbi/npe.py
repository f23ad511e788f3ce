"""``NPE``: neural posterior estimation with a conditional flow, in the shape sbi users know.

    npe = NPE(prior=prior, family="nsf")
    npe.append_simulations(theta, x)          # may be called again, e.g. per round
    npe.train()
    post = npe.posterior(x_o)
    post.sample((n,)); post.log_prob(theta); post.map()

Rows appended with ``proposal=`` something other than the prior are recorded as
such; ``train()`` then switches to the APT atomic loss for all rows (valid for
any mixture of proposals), instead of silently fitting the proposal posterior.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from .. import flows
from .._atomic import save_atomic
from ._rng import generator, seeded
from .embedding import make_embedding, output_features
from .estimator import PosteriorEstimator
from .posterior import Posterior, check_observation
from .priors import check_prior, in_support
from .train import TrainingData, TrainingResult, train_estimator
from .zscore import ZScore

SAVE_FORMAT = "flowvi.sbi.npe"
SAVE_VERSION = 1


def auto_lr(n_train: int) -> float:
    """The starting Adam step size that ``NPE.train(lr="auto")`` uses for ``n_train`` training rows.

    ``0.12 / sqrt(n_train)``, kept within [5e-4, 4e-3]: 4e-3 up to 900 rows (1,000
    simulations less the 10 % validation split), 1.26e-3 at 9,000 (10,000 simulations),
    5e-4 from 57,600. With more data the estimation error shrinks, and the excess loss that
    a step size's minibatch noise leaves in the weights becomes a larger part of it; a smaller
    step lowers that floor, while a large one converges in fewer epochs where the data cannot
    resolve the difference. Measured on the sbibm tasks (docs/sbi.md, "Training recipes"):
    the fixed 2e-3 used before was slower than needed at 1,000 simulations, and at 10,000 it
    left gaussian_linear's posterior mean biased by 0.08 posterior standard deviations, twice
    what the data allow.
    """
    if n_train < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train}")
    return float(min(4e-3, max(5e-4, 0.12 / math.sqrt(n_train))))


class InvalidSimulationsWarning(UserWarning):
    """Rows with NaN/inf were dropped from appended simulations."""


class ProposalWarning(UserWarning):
    """Simulations look as if they came from a proposal other than the one declared."""


def _warn_if_not_prior_draws(prior: Distribution, theta: Tensor, seed: int, p_min: float = 1e-6) -> None:
    """Warn when ``theta (N, d)`` declared as prior draws clearly are not (Bonferroni-corrected KS)."""
    if theta.shape[0] < 50:
        return
    from scipy import stats

    n = min(theta.shape[0], 2000)
    with seeded(seed, 3), torch.no_grad():
        fresh = prior.sample((n,))
    given = theta[:n]
    p = min(stats.ks_2samp(given[:, j].numpy(), fresh[:, j].numpy()).pvalue for j in range(theta.shape[1]))
    if p < p_min / theta.shape[1]:
        warnings.warn(
            f"these {theta.shape[0]} parameters were appended as prior draws (proposal=None) but do not look "
            f"like draws from the prior (KS p = {p:.1e}). If they came from another proposal (e.g. an earlier "
            "posterior), pass proposal=... so train() uses the atomic loss; trained as prior draws they give "
            "the wrong posterior. Pass check_prior_draws=False to silence this.",
            ProposalWarning, stacklevel=3,
        )


class NPE:
    """Neural posterior estimation (amortised; sequential through ``proposal=``).

    Args:
        prior: torch/Pyro distribution with event shape ``(d,)``; bounded supports
            are handled through ``biject_to(prior.support)``.
        family: flow family for ``flowvi.flows.build``: ``"nsf"`` (spline coupling,
            default), ``"maf"``, ``"realnvp"`` or any other name it accepts.
        layers, hidden: number of flow layers and their conditioner sizes.
        final_affine: end the flow with a context-dependent elementwise affine map
            (lets the flow move and scale the posterior per ``x`` cheaply).
        flow_kwargs: more arguments for ``flowvi.flows.build`` (e.g. ``bins=10``).
        embedding_net: ``"mlp"`` (default), ``"cnn"``, ``"deepset"``, ``"identity"``/None,
            or any ``nn.Module`` mapping ``(B, *x_shape) -> (B, k)``; trained jointly.
        embedding_kwargs: arguments for a built-in embedding (e.g. ``out_features=16``).
        z_score_theta: standardise the unbounded parameters.
        z_score_x: ``"auto"`` (the embedding's preference), ``"independent"``,
            ``"last"``, ``"structured"`` or ``"none"`` (see ``flowvi.sbi.zscore``).
        robust_z_score: median/IQR statistics instead of mean/std.
        param_names: names for arviz export.
        seed: seeds network initialisation and the validation split.
    """

    def __init__(
        self,
        prior: Distribution,
        family: str = "nsf",
        *,
        layers: int = 5,
        hidden: Sequence[int] = (50, 50),
        final_affine: bool = True,
        flow_kwargs: dict[str, Any] | None = None,
        embedding_net: str | nn.Module | None = "mlp",
        embedding_kwargs: dict[str, Any] | None = None,
        z_score_theta: bool = True,
        z_score_x: str = "auto",
        robust_z_score: bool = False,
        param_names: Sequence[str] | None = None,
        seed: int = 0,
    ):
        self.prior = prior
        self.theta_dim = check_prior(prior)
        probe = flows.build(family, 2, context_dim=1)  # fail now, not after simulating, on a bad family
        if probe.inverse_kind != "exact":
            raise ValueError(
                f"NPE scores simulated parameters, so it needs a flow with an exact inverse; {family!r} has "
                f"inverse_kind={probe.inverse_kind!r}. Use 'nsf', 'maf' or 'realnvp'."
            )
        self.config = dict(
            family=family, layers=int(layers), hidden=tuple(int(h) for h in hidden), final_affine=bool(final_affine),
            flow_kwargs=dict(flow_kwargs or {}), embedding_kwargs=dict(embedding_kwargs or {}),
            z_score_theta=bool(z_score_theta), z_score_x=z_score_x, robust_z_score=bool(robust_z_score),
            param_names=list(param_names) if param_names is not None else None, seed=int(seed),
            embedding=embedding_net if (embedding_net is None or isinstance(embedding_net, str)) else "custom",
        )
        self._custom_embedding = embedding_net if isinstance(embedding_net, nn.Module) else None
        self._theta = torch.empty(0, self.theta_dim)
        self._x: Tensor | None = None
        self._from_prior = torch.empty(0, dtype=torch.bool)
        self._split_key = torch.empty(0)
        self.rounds: list[dict[str, Any]] = []
        self.history: list[TrainingResult] = []
        self._est: PosteriorEstimator | None = None

    # -- data ------------------------------------------------------------------------------
    @property
    def x_shape(self) -> tuple[int, ...] | None:
        return None if self._x is None else tuple(self._x.shape[1:])

    @property
    def num_simulations(self) -> int:
        return int(self._theta.shape[0])

    def _is_prior(self, proposal) -> bool:
        return proposal is None or proposal is self.prior or (isinstance(proposal, str) and proposal == "prior")

    def append_simulations(self, theta: Tensor, x: Tensor, proposal: Any = None, *, exclude_invalid: bool = True,
                           check_prior_draws: bool = True) -> "NPE":
        """Add simulations ``theta (N, d)``, ``x (N, *x_shape)`` drawn with ``theta ~ proposal``.

        Args:
            proposal: ``None`` / ``"prior"`` / the prior itself for prior draws; anything
                else (e.g. a ``Posterior`` from an earlier round) marks these rows as
                proposal draws, which makes ``train()`` use the atomic loss.
            exclude_invalid: drop rows whose ``x`` or ``theta`` has NaN/inf, with an
                ``InvalidSimulationsWarning`` giving the count (False: raise instead).
            check_prior_draws: rows declared as prior draws are compared with fresh prior
                draws (per-coordinate two-sample KS test); a clear mismatch raises a
                ``ProposalWarning``, since proposal draws trained as prior draws give a
                wrong posterior without any error.

        Raises ``ValueError`` for mismatched shapes or a ``theta`` outside the prior's
        support (such a row has zero posterior density and cannot be trained on).
        Returns ``self`` (chainable).
        """
        theta = torch.as_tensor(theta, dtype=torch.get_default_dtype()).detach()
        x = torch.as_tensor(x, dtype=torch.get_default_dtype()).detach()
        if theta.dim() == 1 and self.theta_dim == 1:
            theta = theta.unsqueeze(1)
        if theta.dim() != 2 or theta.shape[1] != self.theta_dim:
            raise ValueError(f"theta must have shape (N, {self.theta_dim}), got {tuple(theta.shape)}")
        if x.dim() < 1 or x.shape[0] != theta.shape[0]:
            raise ValueError(f"x must have shape (N, ...) with N = {theta.shape[0]} rows like theta, got {tuple(x.shape)}")
        if x.dim() == 1:
            x = x.unsqueeze(1)
        if self._x is not None and tuple(x.shape[1:]) != self.x_shape:
            raise ValueError(f"x rows have shape {tuple(x.shape[1:])} but earlier simulations had {self.x_shape}")
        finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(1) & torch.isfinite(theta).all(1)
        n_bad = int((~finite).sum())
        if n_bad:
            msg = f"{n_bad} of {x.shape[0]} simulations have NaN/inf in x or theta"
            if not exclude_invalid:
                raise ValueError(msg + "; clean them or pass exclude_invalid=True to drop them")
            warnings.warn(msg + " and were dropped", InvalidSimulationsWarning, stacklevel=2)
            theta, x = theta[finite], x[finite]
        inside = in_support(self.prior, theta)
        if not bool(inside.all()):
            bad = (~inside).nonzero().squeeze(1)
            raise ValueError(
                f"{bad.numel()} theta rows lie outside the prior's support (first rows {bad[:5].tolist()}, "
                f"e.g. {theta[bad[0]].tolist()}); the posterior has no density there. Draw proposals "
                "inside the prior's support (a flowvi Posterior always does)."
            )
        is_prior = self._is_prior(proposal)
        if is_prior and check_prior_draws:
            _warn_if_not_prior_draws(self.prior, theta, self.config["seed"])
        g = generator(self.config["seed"], 2, len(self.rounds))
        self._theta = torch.cat([self._theta, theta])
        self._x = x.clone() if self._x is None else torch.cat([self._x, x])
        self._from_prior = torch.cat([self._from_prior, torch.full((theta.shape[0],), is_prior)])
        self._split_key = torch.cat([self._split_key, torch.rand(theta.shape[0], generator=g)])
        # a description, not the proposal object: keeping every round's posterior would keep memory growing
        focus = getattr(proposal, "x_o", None) if not is_prior else None
        self.rounds.append(dict(n=int(theta.shape[0]), dropped=n_bad, from_prior=is_prior,
                                proposal="prior" if is_prior else repr(proposal)[:200],
                                x_o=None if focus is None else focus.detach().clone()))
        return self

    # -- estimator ---------------------------------------------------------------------------
    def _x_zscore_mode(self, embedding: nn.Module) -> str:
        mode = self.config["z_score_x"]
        return getattr(embedding, "z_score", "independent") if mode == "auto" else mode

    def _build(self, x_shape: Sequence[int], theta_fit: Tensor | None, x_fit: Tensor | None) -> PosteriorEstimator:
        cfg = self.config
        with seeded(cfg["seed"], 1):
            if self._custom_embedding is not None:
                embedding = self._custom_embedding
            else:
                embedding = make_embedding(cfg["embedding"], x_shape, **cfg["embedding_kwargs"])
            x_z = ZScore(x_shape, self._x_zscore_mode(embedding), robust=cfg["robust_z_score"])
            t_z = ZScore((self.theta_dim,), "independent" if cfg["z_score_theta"] else "none", robust=cfg["robust_z_score"])
            probe = torch.zeros(2, *x_shape) if x_fit is None else x_fit[:2]
            if x_fit is not None:
                x_z.fit(x_fit)
                t_z.fit(PosteriorEstimator.unbounded(self.prior, theta_fit))
            context_dim = output_features(embedding, x_z(probe))
            flow = flows.build(cfg["family"], self.theta_dim, context_dim=context_dim, hidden=cfg["hidden"],
                               layers=cfg["layers"], final_affine=cfg["final_affine"], **cfg["flow_kwargs"])
        return PosteriorEstimator(self.prior, flow, embedding, t_z, x_z, x_shape)

    @property
    def estimator(self) -> PosteriorEstimator:
        if self._est is None:
            raise RuntimeError("no estimator yet: append_simulations(...) and train() first")
        return self._est

    def train(
        self,
        *,
        loss: str = "auto",
        num_atoms: int = 10,
        combined_loss: bool = True,
        batch_size: int = 200,
        lr: float | str = "auto",
        max_epochs: int = 1000,
        patience: int = 10,
        lr_patience: int | None = 5,
        lr_factor: float = 0.5,
        ema_half_life: float | None = 1.0,
        val_fraction: float = 0.1,
        clip: float | None = 5.0,
        seed: int | None = None,
        show_progress: bool = True,
        checkpoint: str | os.PathLike | None = None,
        resume: bool = False,
        retrain_from_scratch: bool = False,
    ) -> PosteriorEstimator:
        """Fit ``q(theta | x)`` to every appended simulation; returns the trained estimator.

        Args:
            loss: ``"auto"`` (atomic when any rows came from a proposal other than the
                prior, plain NPE otherwise), ``"npe"`` or ``"atomic"``. ``"npe"`` on
                proposal rows is refused: it would fit the proposal posterior.
            num_atoms: atoms per row for the atomic loss (incl. the true one).
            combined_loss: with the atomic loss, also add the NPE loss on rows drawn from
                the prior (both losses are minimised by the true posterior). On by default,
                unlike sbi: the atomic loss only constrains ``q(.|x)`` where atoms fall, and
                in our two-round tests the prior rows' likelihood term kept the posterior
                from drifting (two rounds beat one in 4 of 4 seeds with it, 2 of 4 without).
            batch_size, lr, clip: Adam minibatches; starting step size, ``"auto"`` (the
                default) for ``auto_lr(number of training rows)``: 4e-3 for 1,000 simulations,
                1.26e-3 for 10,000; gradient-norm clip (None: off).
            max_epochs, patience, val_fraction: early stopping on a held-out split
                (a row's split is fixed when appended, so it never moves between calls).
                With the step halved after every 5 stalled epochs, patience 10 stops after
                two halvings in a row without progress; on 20 benchmark trainings it kept
                the same best epoch as patience 20 in every run, at 21 % fewer epochs.
            lr_patience, lr_factor: multiply ``lr`` by ``lr_factor`` after every
                ``lr_patience`` epochs without a better validation loss (None: constant).
            ema_half_life: validate and keep an exponential moving average of the weights
                with this half-life in epochs (None: the raw weights). Averaging removes the
                minibatch noise that a large step size leaves in the weights.
                This recipe with a fixed ``lr=2e-3`` (minibatch 200, the step halved after 5
                epochs without progress, averaged over about an epoch) gave a better held-out NLL than sbi
                0.27's NPE in 20 of 20 runs (5 sbibm tasks x 1k/10k simulations x 2 seeds),
                and better than the same recipe without averaging in 20 of 20
                (docs/sbi.md, "Training recipes").
            seed: batch order and atoms (default: the NPE's seed).
            show_progress: tqdm progress bar.
            checkpoint, resume: save the training state every epoch to this file;
                ``resume=True`` continues from it (same data required).
            retrain_from_scratch: rebuild the networks (and refit z-scoring) instead of
                continuing from the current weights (the default across rounds).
        """
        if self._x is None or self.num_simulations == 0:
            raise RuntimeError("no simulations: call append_simulations(theta, x) first")
        any_proposal = bool((~self._from_prior).any())
        if loss == "auto":
            loss = "atomic" if any_proposal else "npe"
        elif loss == "npe" and any_proposal:
            raise ValueError(
                f"{int((~self._from_prior).sum())} simulations came from a proposal other than the prior: the NPE "
                "loss would learn the proposal posterior, not the posterior. Use loss='auto' or 'atomic' (APT), "
                "or append only prior simulations."
            )
        elif loss not in ("npe", "atomic"):
            raise ValueError(f"loss must be 'auto', 'npe' or 'atomic', got {loss!r}")
        if loss == "atomic" and batch_size < num_atoms:
            raise ValueError(f"batch_size ({batch_size}) must be >= num_atoms ({num_atoms}) for the atomic loss")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if not (lr == "auto" or (not isinstance(lr, str) and lr > 0)):
            raise ValueError(f"lr must be a positive number or 'auto', got {lr!r}")
        is_val = self._split_key < val_fraction
        if self._est is None or retrain_from_scratch:
            fit = ~is_val if bool((~is_val).any()) else torch.ones_like(is_val)
            self._est = self._build(self.x_shape, self._theta[fit], self._x[fit])
        est = self._est
        with torch.no_grad():
            z, _ = est.to_z(self._theta)
            prior_lp = est.prior_log_prob_z(z) if loss == "atomic" else None
        if not bool(torch.isfinite(z).all()):
            raise ValueError("some theta map to infinity in the unbounded space (on the support's boundary?)")
        data = TrainingData(z=z, x=self._x, prior_lp=prior_lp, from_prior=self._from_prior, is_val=is_val)
        if lr == "auto":  # with no training rows left, train_estimator says what to do
            lr = auto_lr(max(1, int((~is_val).sum())))
        result = train_estimator(
            est, data, loss=loss, num_atoms=num_atoms, combined_loss=combined_loss, batch_size=batch_size, lr=lr,
            max_epochs=max_epochs, patience=patience, lr_patience=lr_patience, lr_factor=lr_factor, clip=clip,
            ema_half_life=ema_half_life,
            seed=self.config["seed"] + 1000 * len(self.history) if seed is None else seed,
            show_progress=show_progress, checkpoint=checkpoint, resume=resume,
        )
        self.history.append(result)
        return est

    # -- use -------------------------------------------------------------------------------
    def posterior(self, x_o: Tensor, param_names: Sequence[str] | None = None) -> Posterior:
        """``q(theta | x_o)`` for one observation ``x_o`` of shape ``x_shape``."""
        est = self.estimator
        x_o = check_observation(x_o, est.x_shape)
        focused = [r["x_o"] for r in self.rounds if r.get("x_o") is not None]
        if focused and not any(torch.allclose(f, x_o, rtol=1e-4, atol=1e-6) for f in focused):
            warnings.warn(
                "this estimator was refined with proposals focused on another observation; its posterior at "
                "this x_o is valid in principle but only trained well near the proposals' x_o",
                ProposalWarning, stacklevel=2,
            )
        return Posterior(est, x_o, param_names or self.config["param_names"])

    @torch.no_grad()
    def sample_batched(self, n: int, x: Tensor, seed: int | None = None) -> Tensor:
        """``n`` posterior draws for each of many observations: ``x (B, *x_shape) -> (n, B, d)`` in one pass."""
        est = self.estimator
        est.eval()
        with seeded(seed):
            return est.sample((n,), torch.as_tensor(x, dtype=torch.get_default_dtype()))

    def log_prob_batched(self, theta: Tensor, x: Tensor) -> Tensor:
        """``log q(theta | x)`` for ``theta (*S, B, d)``, ``x (B, *x_shape)`` -> ``(*S, B)``."""
        return self.estimator.log_prob(theta, torch.as_tensor(x, dtype=torch.get_default_dtype()))

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, include_data: bool = False) -> None:
        """Save config + weights (+ the simulations when ``include_data``), versioned.

        The prior (and a custom embedding module) are pickled: load only files you trust.
        """
        from .. import __version__

        payload = {
            "format": SAVE_FORMAT, "format_version": SAVE_VERSION, "flowvi_version": __version__,
            "config": self.config, "prior": self.prior, "custom_embedding": self._custom_embedding,
            "x_shape": self.x_shape, "state_dict": None if self._est is None else self._est.state_dict(),
            "history": [dataclasses.asdict(h) for h in self.history], "rounds": self.rounds,
            "data": None if not include_data else dict(theta=self._theta, x=self._x, from_prior=self._from_prior,
                                                       split_key=self._split_key),
        }
        save_atomic(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NPE":
        """Load an ``NPE`` written by ``save``; a file of another format version is refused clearly."""
        payload = torch.load(path, weights_only=False)
        if not isinstance(payload, dict) or payload.get("format") != SAVE_FORMAT:
            raise ValueError(f"{os.fspath(path)} is not a flowvi NPE file (format {getattr(payload, 'get', lambda k: None)('format')!r})")
        version = payload.get("format_version")
        if version != SAVE_VERSION:
            raise ValueError(
                f"{os.fspath(path)} has NPE format version {version} (written by flowvi "
                f"{payload.get('flowvi_version')}); this flowvi reads version {SAVE_VERSION}. Load it with a "
                "matching flowvi and re-save, or retrain."
            )
        cfg = dict(payload["config"])
        embedding = payload["custom_embedding"] if cfg["embedding"] == "custom" else cfg["embedding"]
        npe = cls(
            payload["prior"], cfg["family"], layers=cfg["layers"], hidden=cfg["hidden"], final_affine=cfg["final_affine"],
            flow_kwargs=cfg["flow_kwargs"], embedding_net=embedding, embedding_kwargs=cfg["embedding_kwargs"],
            z_score_theta=cfg["z_score_theta"], z_score_x=cfg["z_score_x"], robust_z_score=cfg["robust_z_score"],
            param_names=cfg["param_names"], seed=cfg["seed"],
        )
        npe.rounds = list(payload["rounds"])
        npe.history = [TrainingResult(**h) for h in payload["history"]]
        data = payload.get("data")
        if data is not None:
            npe._theta, npe._x, npe._from_prior, npe._split_key = data["theta"], data["x"], data["from_prior"], data["split_key"]
        if payload["state_dict"] is not None:
            npe._est = npe._build(payload["x_shape"], None, None)
            try:
                npe._est.load_state_dict(payload["state_dict"])
            except RuntimeError as err:
                raise ValueError(
                    f"{os.fspath(path)} does not match the networks this flowvi builds for its config "
                    f"(family {cfg['family']!r}); it was written by flowvi {payload.get('flowvi_version')}: {err}"
                ) from None
            npe._est.eval()
        return npe
