"""Benchmark tasks with reference posteriors (sbibm definitions; Lueckmann et al. 2021).

``get_task(name)`` or the classes directly. Each task has ``prior``, a batched
``simulator(theta (b, d)) -> x (b, *x_shape)``, ``observation(i, seed)`` and
``reference_posterior(x_o, n, seed)``.
"""
from .base import Task
from .bernoulli_glm import BernoulliGLM
from .gaussian_linear import GaussianLinear
from .gaussian_mixture import GaussianMixture
from .slcp import SLCP
from .two_moons import TwoMoons

TASKS = {
    "gaussian_linear": GaussianLinear,
    "two_moons": TwoMoons,
    "gaussian_mixture": GaussianMixture,
    "slcp": SLCP,
    "bernoulli_glm": BernoulliGLM,
}


def get_task(name: str, **kwargs) -> Task:
    """A task by its sbibm name (``TASKS``), with optional constructor arguments."""
    try:
        return TASKS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}") from None


__all__ = ["Task", "TASKS", "get_task", "GaussianLinear", "TwoMoons", "GaussianMixture", "SLCP", "BernoulliGLM"]
