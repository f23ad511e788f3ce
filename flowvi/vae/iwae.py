"""Importance-sampled log-likelihood (the IWAE bound, Burda et al. 2016).

``log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log k`` with
``z_k ~ q(z|x)``. The k samples are processed in chunks with a running
logsumexp, so k = 1000-5000 fits in memory. The base noise for all k samples of a
data batch is drawn at once from one seeded generator, so the estimate does not
depend on the chunk size.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


@torch.no_grad()
def log_likelihood(model, x: Tensor, k: int = 1000, batch: int = 100, chunk: int = 100, seed: int = 0,
                   progress: bool = False) -> Tensor:
    """IWAE estimate of log p(x) for every row of ``x``.

    The noise is drawn per data batch of ``batch`` rows, so at a fixed seed the
    estimate does not depend on ``chunk`` but does on ``batch``.

    Args:
        model: a ``VAE``.
        x: data (N, x_dim).
        k: importance samples per datapoint.
        batch: datapoints per encoder pass.
        chunk: samples per decoder pass (memory ~ chunk * batch * decoder width).
        seed: seeds the noise (global RNG untouched); same seed, same estimate.

    Returns:
        (N,) tensor of log p(x) estimates (a lower bound in expectation, tight as k grows).
    """
    if int(k) < 1 or int(batch) < 1 or int(chunk) < 1:
        raise ValueError(f"k, batch and chunk must be positive, got {k}, {batch}, {chunk}")
    x = model.check_x(x)
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    was_training = model.training
    model.eval()
    out = []
    starts = range(0, x.shape[0], int(batch))
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"IWAE k={k}")
    try:
        for s in starts:
            xb = x[s:s + int(batch)]
            h = model.encoder(xb)
            eps = torch.randn(int(k), xb.shape[0], model.z_dim, generator=gen, dtype=x.dtype, device=x.device)
            acc = None
            for c in range(0, int(k), int(chunk)):
                z = eps[c:c + int(chunk)]
                # the sampling pass by hand from given base noise: log q = log N(eps) - sum ladj
                log_q = model.log_prior(z)
                for layer in model.flow.layers:
                    z, ladj = layer.forward_and_log_det(z, h)
                    log_q = log_q - ladj
                log_w = model.decoder.log_prob(xb, z) + model.log_prior(z) - log_q  # (chunk, B)
                part = torch.logsumexp(log_w, 0)
                acc = part if acc is None else torch.logaddexp(acc, part)
            out.append(acc - math.log(int(k)))
    finally:
        model.train(was_training)
    return torch.cat(out)
