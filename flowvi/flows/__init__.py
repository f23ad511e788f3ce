"""Flow families as variational families (sampling direction z -> x).

Every layer is a Pyro ``TransformModule`` and ``ConditionalTransform``;
``build(family, dim, ...)`` returns a ``Flow`` whose ``flow(context)`` is a Pyro
``TransformedDistribution`` with ``rsample_and_log_prob``.
"""
from .autoregressive import IAF, MAF, AffineAutoregressive
from .base import ConditionedLayer, FlowLayer, NotInvertibleError, soft_clamp
from .build import build, family_names
from .coupling import AffineCoupling
from .distribution import Flow, FlowDistribution, StandardNormal, StudentTBase
from .linear import ActNorm, ElementwiseAffine, LULinear, Permutation
from .made import MADE
from .params import ParamNet, mlp
from .planar import Planar
from .radial import Radial
from .spline import SplineAutoregressive, SplineCoupling, rq_spline
from .sylvester import Sylvester

__all__ = [
    "IAF", "MAF", "MADE", "ActNorm", "AffineAutoregressive", "AffineCoupling", "ConditionedLayer",
    "ElementwiseAffine", "Flow", "FlowDistribution", "FlowLayer", "LULinear", "NotInvertibleError",
    "ParamNet", "Permutation", "Planar", "Radial", "SplineAutoregressive", "SplineCoupling",
    "StandardNormal", "StudentTBase", "Sylvester", "build", "family_names", "mlp", "rq_spline", "soft_clamp",
]
