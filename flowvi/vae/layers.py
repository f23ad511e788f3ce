"""Building blocks of the default encoder/decoder MLPs."""
from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn


class GatedLinear(nn.Module):
    """``y = (W x + b) * sigmoid(V x + c)``: the gated dense unit of Dauphin et al. (2017).

    Tomczak & Welling's VAE experiments (Householder flows, VampPrior) use these in
    place of activated linear layers. With KL warm-up they took every posterior's test
    NLL on statically binarized MNIST 5-10 nats lower than softplus MLPs did (docs/vae.md,
    run D). One ``Linear`` computes both halves (one matmul).
    Shapes: ``(*, in_features) -> (*, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.out_features = int(out_features)
        self.linear = nn.Linear(int(in_features), 2 * self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.linear(x).chunk(2, dim=-1)
        return value * gate.sigmoid()


def hidden_layers(sizes: Sequence[int], activation: Callable[[], nn.Module] = nn.Softplus,
                  gated: bool = False) -> list[nn.Module]:
    """The hidden layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``, activated or gated."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [GatedLinear(a, b)] if gated else [nn.Linear(a, b), activation()]
    return layers
