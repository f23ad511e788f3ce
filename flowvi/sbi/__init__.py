"""Simulation-based inference with conditional flows: NPE, sequential SNPE-C (APT),
simulation campaigns with an on-disk store, diagnostics and benchmark tasks."""
from . import tasks
from .c2st import c2st
from .diagnostics import expected_coverage, plot_sbc, sbc, sbc_ranks, sbc_uniformity
from .embedding import CNN1DEmbedding, DeepSetEmbedding, IdentityEmbedding, MLPEmbedding
from .estimator import PosteriorEstimator
from .npe import NPE, InvalidSimulationsWarning, ProposalWarning, auto_lr
from .posterior import Posterior
from .priors import BoxUniform
from .simulate import SimulationSummary, SimulationWarning, Simulations, simulate
from .snpe import SNPE
from .store import SimulationStore
from .train import CheckpointError, TrainingResult
from .zscore import ZScore

__all__ = [
    "tasks", "NPE", "SNPE", "Posterior", "PosteriorEstimator", "BoxUniform", "simulate", "Simulations", "SimulationSummary",
    "SimulationWarning", "SimulationStore", "InvalidSimulationsWarning", "ProposalWarning", "c2st", "sbc", "sbc_ranks", "sbc_uniformity",
    "plot_sbc", "expected_coverage", "MLPEmbedding", "CNN1DEmbedding", "DeepSetEmbedding", "IdentityEmbedding",
    "ZScore", "TrainingResult", "CheckpointError", "auto_lr",
]
