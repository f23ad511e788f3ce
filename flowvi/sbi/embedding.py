"""Embedding networks: learnt summaries of the data ``x``, trained jointly with the flow.

Each takes ``x`` of shape ``(B, *x_shape)`` and returns ``(B, out_features)``, the
flow's context. Any ``nn.Module`` with that contract works as well; its output
size is found by one dry run. ``z_score`` is each class's preferred data
standardisation (see ``flowvi.sbi.zscore``), used when ``NPE(z_score_x="auto")``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..flows.params import mlp


class IdentityEmbedding(nn.Module):
    """No learnt summary: ``x`` flattened, ``(B, *x_shape) -> (B, prod(x_shape))``."""

    z_score = "independent"

    def __init__(self, x_shape: Sequence[int]):
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.out_features = math.prod(self.x_shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(*x.shape[: x.dim() - len(self.x_shape)], self.out_features)


class MLPEmbedding(nn.Module):
    """A fully connected net on flattened ``x``: ``(B, *x_shape) -> (B, out_features)``.

    Args:
        x_shape: shape of one observation.
        out_features: size of the learnt summary.
        hidden: hidden layer sizes (ReLU).
        skip: also pass the (z-scored) ``x`` itself to the flow, so the output is
            ``[x, mlp(x)]`` of size ``x.numel() + out_features``. ``"auto"``: on for
            observations of at most 64 numbers. Why: a ReLU net only approximates
            the linear part of ``x -> posterior``; on gaussian_linear (posterior mean
            linear in x) the net alone left a posterior-mean bias of ~0.2 posterior
            sd per coordinate, visible to C2ST, that the raw-``x`` path removes.
    """

    z_score = "independent"

    def __init__(self, x_shape: Sequence[int], out_features: int = 32, hidden: Sequence[int] = (64, 64),
                 skip: bool | str = "auto"):
        super().__init__()
        self.x_shape = tuple(x_shape)
        numel = math.prod(self.x_shape)
        if skip == "auto":
            skip = numel <= 64
        elif not isinstance(skip, bool):
            raise ValueError(f"skip must be True, False or 'auto', got {skip!r}")
        self.skip = skip
        self.out_features = int(out_features) + (numel if skip else 0)
        self.net = mlp(numel, int(out_features), tuple(hidden))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(*x.shape[: x.dim() - len(self.x_shape)], -1)
        h = self.net(flat)
        return torch.cat([flat, h], -1) if self.skip else h


class CNN1DEmbedding(nn.Module):
    """A small 1-D CNN for series: ``(B, L)`` or ``(B, C, L) -> (B, out_features)``.

    Conv(kernel_size, 'same' padding) + ReLU + MaxPool(pool) per entry of
    ``channels``, then an MLP on the flattened feature maps.

    Args:
        x_shape: ``(L,)`` or ``(C, L)``.
        out_features: summary size.
        channels: output channels of each conv block.
        kernel_size: odd kernel width.
        pool: max-pool width after each block (skipped once the series is shorter).
        hidden: hidden sizes of the final MLP.
    """

    z_score = "structured"

    def __init__(
        self,
        x_shape: Sequence[int],
        out_features: int = 32,
        channels: Sequence[int] = (8, 16),
        kernel_size: int = 5,
        pool: int = 2,
        hidden: Sequence[int] = (64,),
    ):
        super().__init__()
        self.x_shape = tuple(int(s) for s in x_shape)
        if len(self.x_shape) not in (1, 2):
            raise ValueError(f"CNN1DEmbedding expects x_shape (L,) or (C, L), got {self.x_shape}")
        c_in, length = (1, self.x_shape[0]) if len(self.x_shape) == 1 else self.x_shape
        self.out_features = int(out_features)
        blocks: list[nn.Module] = []
        for c in channels:
            blocks += [nn.Conv1d(c_in, int(c), kernel_size, padding=kernel_size // 2), nn.ReLU()]
            if length >= 2 * pool:
                blocks.append(nn.MaxPool1d(pool))
                length //= pool
            c_in = int(c)
        self.conv = nn.Sequential(*blocks)
        self.head = mlp(c_in * length, self.out_features, tuple(hidden))

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[: x.dim() - len(self.x_shape)]
        x = x.reshape(-1, *self.x_shape)
        if x.dim() == 2:
            x = x.unsqueeze(1)
        h = self.conv(x).flatten(1)
        return self.head(h).reshape(*batch, self.out_features)


class DeepSetEmbedding(nn.Module):
    """Permutation-invariant set summary (Zaheer et al. 2017): ``rho(pool_i phi(x_i))``.

    ``x`` is ``(B, n_set, in_features)``: ``n_set`` exchangeable observations per
    simulation. Mean pooling keeps the scale independent of the set size.

    Args:
        x_shape: ``(n_set, in_features)``.
        out_features: summary size.
        hidden: hidden sizes of ``phi`` (its output is ``hidden[-1]``) and of ``rho``.
        pooling: ``"mean"``, ``"sum"`` or ``"max"``.
    """

    z_score = "last"

    def __init__(
        self, x_shape: Sequence[int], out_features: int = 32, hidden: Sequence[int] = (64, 64), pooling: str = "mean"
    ):
        super().__init__()
        self.x_shape = tuple(int(s) for s in x_shape)
        if len(self.x_shape) != 2:
            raise ValueError(f"DeepSetEmbedding expects x_shape (n_set, features), got {self.x_shape}")
        if pooling not in ("mean", "sum", "max"):
            raise ValueError(f"pooling must be mean, sum or max, got {pooling!r}")
        hidden = tuple(hidden)
        self.pooling = pooling
        self.out_features = int(out_features)
        self.phi = nn.Sequential(mlp(self.x_shape[1], hidden[-1], hidden[:-1]), nn.ReLU())
        self.rho = mlp(hidden[-1], self.out_features, hidden[-1:])

    def forward(self, x: Tensor) -> Tensor:
        h = self.phi(x)
        if self.pooling == "mean":
            h = h.mean(-2)
        elif self.pooling == "sum":
            h = h.sum(-2)
        else:
            h = h.amax(-2)
        return self.rho(h)


BUILTIN = {"identity": IdentityEmbedding, "mlp": MLPEmbedding, "cnn": CNN1DEmbedding, "deepset": DeepSetEmbedding}


def make_embedding(spec, x_shape: Sequence[int], **kwargs) -> nn.Module:
    """An embedding from a name in ``BUILTIN`` (``None`` = identity) or a ready module."""
    if spec is None:
        spec = "identity"
    if isinstance(spec, nn.Module):
        if kwargs:
            raise ValueError("embedding_kwargs apply to built-in embeddings only, not to a ready nn.Module")
        return spec
    if isinstance(spec, str) and spec.lower() in BUILTIN:
        return BUILTIN[spec.lower()](tuple(x_shape), **kwargs)
    raise ValueError(f"embedding_net must be an nn.Module or one of {sorted(BUILTIN)}, got {spec!r}")


@torch.no_grad()
def output_features(net: nn.Module, x_example: Tensor) -> int:
    """Output size of ``net`` from a dry run on ``x_example`` ``(B, *x_shape)``; checks the contract."""
    was = net.training
    net.eval()
    try:
        out = net(x_example)
    finally:
        net.train(was)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x_example.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"the embedding net must map x of shape (B, ...) to (B, features); on a batch of "
            f"{x_example.shape[0]} it returned {shape}"
        )
    return int(out.shape[1])
