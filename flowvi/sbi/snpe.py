"""``SNPE``: sequential neural posterior estimation, SNPE-C / APT (Greenberg et al. 2019).

Round 1 simulates from the prior and trains with the plain NPE loss; each later
round simulates from the current posterior at ``x_o`` and trains (continuing
from the current weights) on all rounds with the atomic loss, whose contrasting
atoms are the other parameters in the batch and whose correction is the prior's
log-density. By default the prior rows also keep their NPE likelihood term
(``combined_loss``; see ``NPE.train``). Only tensors are kept between rounds
(no posterior objects, no autograd graphs), so memory grows only with the
simulations themselves.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

from .npe import NPE
from .posterior import Posterior, check_observation
from .simulate import simulate


SNPE_LR = 2e-3  # the step of every round unless train_kwargs give one (see ``SNPE.run``)


class SNPE:
    """Sequential posterior estimation for one observation.

    Args:
        prior: the prior (see ``NPE``).
        simulator: batched ``theta (b, d) -> x (b, ...)``.
        family: flow family (default ``"nsf"``).
        num_atoms: atoms per row in the atomic loss (default 10).
        combined_loss: add the NPE loss on the prior rows in atomic rounds (default True).
        **npe_kwargs: passed to ``NPE`` (layers, hidden, embedding_net, ...).

    After ``run``, ``self.npe`` holds the estimator and all simulations, and
    ``self.summaries`` the simulation summary of each round.
    """

    def __init__(self, prior: Distribution, simulator: Callable[[Tensor], Tensor], family: str = "nsf", *,
                 num_atoms: int = 10, combined_loss: bool = True, **npe_kwargs: Any):
        self.prior = prior
        self.simulator = simulator
        self.num_atoms = int(num_atoms)
        self.combined_loss = bool(combined_loss)
        self.npe = NPE(prior, family, **npe_kwargs)
        self.summaries: list = []

    def run(
        self,
        x_o: Tensor,
        rounds: int = 2,
        simulations_per_round: int | list[int] = 1000,
        seed: int = 0,
        *,
        train_kwargs: dict[str, Any] | None = None,
        simulate_kwargs: dict[str, Any] | None = None,
        show_progress: bool = False,
    ) -> Posterior:
        """Run ``rounds`` rounds of simulate-then-train focused on ``x_o``; returns ``q(theta | x_o)``.

        Args:
            x_o: the observation, shape ``x_shape``.
            rounds: number of rounds (1 = plain NPE).
            simulations_per_round: an int, or one int per round.
            seed: seeds the simulations of every round and the training.
            train_kwargs: passed to ``NPE.train`` (e.g. ``max_epochs``, ``patience``). The
                step size defaults to a fixed ``lr=2e-3`` in every round, not ``NPE.train``'s
                ``"auto"``: the first rounds hold few rows, which would get the largest step,
                and on the flu case study (2,000 simulations in 4 rounds, seeds 0-3) that
                gave a worse posterior in 4 of 4 seeds (C2ST 0.660 against 0.614 on average).
            simulate_kwargs: passed to ``simulate`` (e.g. ``workers``, ``batch_size``).
        """
        if int(rounds) < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        sims = [int(simulations_per_round)] * int(rounds) if isinstance(simulations_per_round, int) else list(simulations_per_round)
        if len(sims) != int(rounds):
            raise ValueError(f"simulations_per_round has {len(sims)} entries for {rounds} rounds")
        train_kwargs = dict(train_kwargs or {})
        train_kwargs.setdefault("show_progress", show_progress)
        train_kwargs.setdefault("lr", SNPE_LR)
        simulate_kwargs = dict(simulate_kwargs or {})
        simulate_kwargs.setdefault("batch_size", min(1000, max(sims)))
        x_o = torch.as_tensor(x_o, dtype=torch.get_default_dtype())
        posterior: Posterior | None = None
        for r, n in enumerate(sims):
            proposal = self.prior if posterior is None else posterior
            theta, x, summary = simulate(self.simulator, proposal, n, seed=seed + 7919 * r, **simulate_kwargs)
            self.summaries.append(summary)
            if theta.shape[0] == 0:
                raise RuntimeError(f"round {r + 1}: every simulation failed ({summary})")
            if posterior is None:  # x_shape is known now: check x_o before any training
                x_o = check_observation(x_o, tuple(x.shape[1:]))
            self.npe.append_simulations(theta, x, proposal=None if posterior is None else posterior)
            train_kwargs.setdefault("combined_loss", self.combined_loss)
            self.npe.train(num_atoms=self.num_atoms, seed=seed + 104729 * r, **train_kwargs)
            if posterior is None:
                posterior = self.npe.posterior(x_o)
        return posterior
