"""Minibatch training of a ``VAE`` with checkpoint/resume and a wall-clock budget.

A checkpoint holds the model, the optimizer, the epoch reached, the history and
the RNG states (global torch RNG for the posterior noise, the shuffling generator),
written atomically (temporary file + ``os.replace``), so a killed run resumes
from its last completed epoch and continues as if never interrupted.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from .._atomic import save_atomic
from .._optim import adam
from .data import as_data_tensor

_CKPT_VERSION = 1
HISTORY_COLUMNS = ["epoch", "train_neg_elbo", "valid_neg_elbo", "beta", "seconds", "steps", "complete"]


@torch.no_grad()
def evaluate_elbo(model, data: Tensor, batch_size: int = 500, n_samples: int = 1, seed: int = 0) -> float:
    """Mean ELBO over ``data`` (N, x_dim), with seeded noise that leaves the global RNG as it was."""
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for s in range(0, data.shape[0], batch_size):
            total += float(model.elbo(data[s:s + batch_size], n_samples).sum())
    model.train(was_training)
    return total / data.shape[0]


def beta_at(epoch_float: float, warmup_epochs: float, beta_start: float = 0.0) -> float:
    """KL weight: linear from ``beta_start`` to 1 over the first ``warmup_epochs`` epochs."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, beta_start + (1.0 - beta_start) * epoch_float / warmup_epochs)


def param_groups(model, lr: float, flow_lr_scale: float) -> list[dict]:
    """Adam groups: the flow layers after the Gaussian head at ``lr * flow_lr_scale``, the rest at ``lr``."""
    if not float(flow_lr_scale) > 0:
        raise ValueError(f"flow_lr_scale must be > 0, got {flow_lr_scale}")
    flow_layers = list(model.flow.layers)[1:]  # layer 0 is the Gaussian head
    flow_ids = {id(p) for layer in flow_layers for p in layer.parameters()}
    rest = [p for p in model.parameters() if id(p) not in flow_ids]
    groups = [{"params": rest, "lr": float(lr)}]
    if flow_ids:
        groups.append({"params": [p for p in model.parameters() if id(p) in flow_ids], "lr": float(lr) * float(flow_lr_scale)})
    return groups


def load_checkpoint(model, checkpoint) -> pd.DataFrame:
    """Load a ``train`` checkpoint's weights into ``model`` and return its history.

    The weights are the best validation epoch's when the run kept them (``keep_best``),
    else the last epoch's: what ``train`` itself leaves in the model.
    """
    state = torch.load(checkpoint, weights_only=False)
    best = state.get("best_state")
    model.load_state_dict(best if best is not None else state["model"])
    return pd.DataFrame(state["history"], columns=HISTORY_COLUMNS)


def train(
    model,
    train_data,
    valid_data=None,
    epochs: int = 10,
    batch_size: int = 100,
    lr: float = 1e-3,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    time_budget: float | None = None,
    warmup_epochs: float = 0.0,
    free_bits: float = 0.0,
    clip_grad: float | None = 100.0,
    valid_batch_size: int = 500,
    flow_lr_scale: float = 1.0,
    clock: str = "wall",
    patience: int | None = None,
    keep_best: bool = False,
) -> pd.DataFrame:
    """Train ``model`` by Adam on the (annealed, free-bits) negative ELBO.

    Args:
        model: a ``VAE``.
        train_data, valid_data: (N, x_dim) arrays/tensors (validated once here).
        epochs: total epochs (a resumed run goes on up to this number).
        batch_size, lr: minibatch size and Adam learning rate.
        seed: seeds shuffling and the posterior noise (sets torch's global seed).
        checkpoint: file path; saved after every epoch, and resumed from if it exists.
        progress: a tqdm bar over epochs.
        time_budget: seconds of training (this call); stops mid-epoch when spent,
            recording that epoch with ``complete=False``.
        warmup_epochs: KL warm-up: beta rises linearly from 0 to 1 over this many epochs.
        free_bits: nats per latent dimension; the batch-mean total KL is floored at
            ``free_bits * z_dim`` (see ``VAE.loss``).
        clip_grad: gradient-norm clip (None: off); guards against rare huge steps.
        flow_lr_scale: the flow layers after the Gaussian head learn at ``lr * flow_lr_scale``.
            With a wide encoder output ``h`` (300 on MNIST) their conditioner/hyper networks
            move every per-datapoint flow parameter fast at the full rate, and the flow VAEs
            fell behind the diagonal one per epoch (valid -ELBO after 6 MNIST epochs: planar
            137.7 and IAF 129.2 at 1.0 vs 125.2 and 124.5 at 0.1; diagonal 125.5): use about
            0.1 there. On small problems with short runs 1.0 (the default) learns faster.
        clock: what ``time_budget`` and the ``seconds`` column count: ``"wall"`` (elapsed time) or
            ``"process"`` (this process's CPU time, all its threads). With one torch thread the two agree on
            an idle machine; ``"process"`` keeps equal-budget comparisons fair when other jobs share the CPU.
        patience: early stopping: stop after this many epochs in a row without a better
            validation -ELBO (needs ``valid_data``). A static binarisation overfits: on MNIST the
            diagonal VAE's validation -ELBO stops falling after about 70 epochs while its
            training -ELBO goes on falling.
        keep_best: at the end, load the weights of the epoch with the best validation -ELBO
            (needs ``valid_data``; kept in the checkpoint, so it survives a resume).

    Returns:
        DataFrame, one row per epoch: ``epoch``, ``train_neg_elbo`` (running mean of
        the unannealed -ELBO over the epoch), ``valid_neg_elbo`` (NaN without
        valid data), ``beta``, ``seconds`` (training time of the epoch, validation excluded),
        ``steps`` (optimizer steps in it), ``complete`` (False: cut by ``time_budget``).
    """
    train_x = as_data_tensor(train_data, "train_data", binary=model.decoder.binary, x_dim=model.x_dim)
    valid_x = None
    if valid_data is not None:
        valid_x = as_data_tensor(valid_data, "valid_data", binary=model.decoder.binary, x_dim=model.x_dim)
    if int(batch_size) < 1 or int(epochs) < 0:
        raise ValueError(f"batch_size must be >= 1 and epochs >= 0, got {batch_size}, {epochs}")
    if clock not in ("wall", "process"):
        raise ValueError(f"clock must be 'wall' or 'process', got {clock!r}")
    now = time.perf_counter if clock == "wall" else time.process_time
    if (patience is not None or keep_best) and valid_x is None:
        raise ValueError("patience and keep_best compare validation -ELBOs: pass valid_data")
    if patience is not None and int(patience) < 1:
        raise ValueError(f"patience must be >= 1 epoch, got {patience!r}")
    n = train_x.shape[0]
    steps_per_epoch = math.ceil(n / int(batch_size))

    optimizer = adam(param_groups(model, lr, flow_lr_scale), lr)
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    rows: list[dict] = []
    start_epoch = 0
    best_state = None  # weights of the best validation epoch (keep_best)
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        state = torch.load(path, weights_only=False)
        if state.get("version") != _CKPT_VERSION:
            raise ValueError(f"checkpoint {path} has an unknown format version {state.get('version')!r}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        rows = state["history"]
        best_state = state.get("best_state")
        start_epoch = int(state["epoch"])
        if state.get("n_train") != n:
            raise ValueError(f"checkpoint {path} was trained on {state.get('n_train')} rows, this call has {n}")

    # the best epoch so far is the history's (first) lowest validation -ELBO; only its weights need keeping
    best_valid, best_epoch = min(((r["valid_neg_elbo"], r["epoch"]) for r in rows
                                  if not math.isnan(r["valid_neg_elbo"])), default=(math.inf, 0))
    if patience is not None and start_epoch - best_epoch >= int(patience):
        epochs = start_epoch  # the checkpointed run had already stopped early: a resume adds nothing
    t_start = now()
    bar = None
    if progress and start_epoch < epochs:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(epochs), initial=start_epoch, desc="VAE", unit="epoch")
    model.train()
    out_of_time = False
    for epoch in range(start_epoch, int(epochs)):
        t0 = now()
        perm = torch.randperm(n, generator=gen)
        total, seen, complete = 0.0, 0, True
        beta = 1.0
        for step in range(steps_per_epoch):
            if time_budget is not None and now() - t_start >= time_budget:
                complete, out_of_time = False, True
                break
            xb = train_x[perm[step * batch_size:(step + 1) * batch_size]]
            beta = beta_at(epoch + step / steps_per_epoch, warmup_epochs)
            loss, elbo = model.loss(xb, beta=beta, free_bits=free_bits)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch + 1}, step {step}; lower lr or set clip_grad "
                    f"(the last checkpoint, if any, is at {path})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
            total += float(elbo) * xb.shape[0]
            seen += xb.shape[0]
        if seen == 0:
            break
        seconds = now() - t0
        valid = evaluate_elbo(model, valid_x, valid_batch_size) if valid_x is not None else float("nan")
        model.train()
        if valid_x is not None and -valid < best_valid:
            best_valid, best_epoch = -valid, epoch + 1
            if keep_best:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rows.append({"epoch": epoch + 1, "train_neg_elbo": -total / seen, "valid_neg_elbo": -valid,
                     "beta": beta, "seconds": seconds, "steps": step + 1 if complete else step,
                     "complete": complete})
        if path is not None:
            save_atomic({"version": _CKPT_VERSION, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "epoch": epoch + 1, "history": rows, "shuffle_rng": gen.get_state(),
                          "torch_rng": torch.get_rng_state(), "n_train": n, "best_state": best_state}, path)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(train=f"{-total / seen:.2f}", valid=f"{-valid:.2f}")
        if out_of_time or (patience is not None and epoch + 1 - best_epoch >= int(patience)):
            break
    if bar is not None:
        bar.close()
    if keep_best and best_state is not None:
        model.load_state_dict(best_state)
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)
