"""Flow families as variational families (sampling direction z -> x).

Every layer is a Pyro ``TransformModule`` and ``ConditionalTransform``;
``build(family, dim, ...)`` returns a ``Flow`` whose ``flow(context)`` is a Pyro
``TransformedDistribution`` with ``rsample_and_log_prob``.
"""
from .base import ConditionedLayer, FlowLayer, NotInvertibleError, soft_clamp
from .build import build, family_names
from .distribution import Flow, FlowDistribution, StandardNormal, StudentTBase
from .linear import ActNorm, ElementwiseAffine, LULinear, Permutation
from .made import MADE
from .params import ParamNet, mlp

__all__ = [
    "ActNorm", "ConditionedLayer", "ElementwiseAffine", "Flow", "FlowDistribution", "FlowLayer",
    "LULinear", "MADE", "NotInvertibleError", "ParamNet", "Permutation", "StandardNormal",
    "StudentTBase", "build", "family_names", "mlp", "soft_clamp",
]
