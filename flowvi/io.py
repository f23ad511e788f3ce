"""Save and load fitted flows, VI results and VAEs, versioned.

    flowvi.io.save_flow(flow, "flow.pt");        flow = flowvi.io.load_flow("flow.pt")
    flowvi.io.save_result(result, "result.pt");  result = flowvi.io.load_result("result.pt", log_prob=target)
    flowvi.io.save_vae(vae, "vae.pt");           vae = flowvi.io.load_vae("vae.pt")
    obj = flowvi.io.load(path)   # any of the above, or an NPE file (``flowvi.sbi.NPE.save``)

A trained ``NPE`` saves itself (``NPE.save``/``NPE.load``); ``load`` reads those too.

**What a file holds.** A dict read with ``torch.load(weights_only=True)``:

* ``format`` (``"flowvi"``), ``kind`` (``"flow"``, ``"vi_result"`` or ``"vae"``),
  ``format_version``, and the flowvi and torch versions that wrote it;
* ``architecture``: the module pickled with its parameters and persistent buffers
  replaced by shape-only ("meta") tensors, so it rebuilds without repeating the
  ``build``/``VAE`` arguments (any layer list, custom layers and bases included);
* ``state_dict``: the weights, as plain tensors (the only copy of them);
* ``description``: class, sizes, layer names and parameter count, readable without
  unpickling the architecture; ``metadata``: a JSON-able dict given at save time;
* for a VI result: the ELBO ``trace``, ``steps``, ``converged``, ``seconds``, ``seed``,
  ``names`` and the importance diagnostics measured at save time.

**What a VI result file does not hold: the log density.** ``log_prob`` is any Python
callable (often a closure or a lambda), which cannot be saved in general. Pass it back
to ``load_result(path, log_prob=...)`` (a callable, or the name of a built-in
``flowvi.targets`` target) to get ``elbo()``, ``draws_and_log_weights()`` and fresh
diagnostics; without it, sampling, ``log_prob``, ``summary()`` and the saved
diagnostics still work, and what needs the target raises an error saying so.

**Versions.** A file whose ``format_version`` is not this flowvi's ``FORMAT_VERSION``
is refused with an error naming both versions (and the flowvi that wrote it); a file
that is not a flowvi file is refused as such.

**Trust.** Rebuilding the architecture unpickles Python objects, which can run code:
load only files you trust (the same holds for ``NPE.load``). If a newer flowvi can no
longer rebuild a saved architecture, rebuild the module yourself and pass it as
``into=``: only the weights (read with ``weights_only=True``) are then loaded.
"""
from __future__ import annotations

import copy
import io
import json
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ._atomic import save_atomic

FORMAT = "flowvi"
FORMAT_VERSION = 1
KINDS = ("flow", "vi_result", "vae")

# attributes that hold per-call caches (often tensors still attached to an autograd graph,
# which torch refuses to pickle); they are refilled on the next call, so they are dropped
_CACHES_NONE = ("_ladj_cache",)
_CACHES_POP = ("_cache", "_flowvi_param_cache", "_diag")


class FormatError(ValueError):
    """A file is not a flowvi file of the expected kind, or has another format version."""


def _versions() -> dict[str, str]:
    from . import __version__

    return {"flowvi_version": __version__, "torch_version": str(torch.__version__)}


def _clear_caches(module: nn.Module) -> None:
    for m in module.modules():
        d = m.__dict__
        for k in _CACHES_NONE:
            if k in d:
                d[k] = None
        if "_cached_x_y" in d:  # torch Transform's cache_size=1 cache
            d["_cached_x_y"] = (None, None)
        for k in _CACHES_POP:
            d.pop(k, None)


def _architecture_bytes(module: nn.Module) -> bytes:
    """The module pickled without its weights: parameters and persistent buffers become
    meta tensors (shape and dtype only); non-persistent buffers, which ``state_dict``
    leaves out, are kept as they are."""
    _clear_caches(module)
    skeleton = copy.deepcopy(module)
    for m in skeleton.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[name] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None and name not in m._non_persistent_buffers_set:
                m._buffers[name] = torch.empty_like(b, device="meta")
    buf = io.BytesIO()
    try:
        torch.save(skeleton, buf)
    except (pickle.PicklingError, TypeError, AttributeError, RuntimeError) as err:
        raise TypeError(
            f"{type(module).__name__} could not be saved: part of it cannot be pickled ({err}). "
            "Lambdas or local functions stored on a module (e.g. a custom encoder or activation) are the "
            "usual cause: use module-level classes/functions."
        ) from err
    return buf.getvalue()


def _describe(module: nn.Module) -> dict[str, Any]:
    d: dict[str, Any] = {
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "parameters": int(sum(p.numel() for p in module.parameters())),
        "dtype": str(next(iter(module.state_dict().values())).dtype) if module.state_dict() else None,
        "repr": repr(module)[:20_000],
    }
    for attr in ("dim", "context_dim", "x_dim", "z_dim", "family", "flow_layers", "likelihood", "inverse_kind"):
        if hasattr(module, attr) and isinstance(getattr(module, attr), (int, str, float, type(None))):
            d[attr] = getattr(module, attr)
    layers = getattr(module, "layers", None)
    if isinstance(layers, nn.ModuleList):
        d["layers"] = [type(layer).__name__ for layer in layers]
    return d


def _payload(kind: str, module: nn.Module, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "format": FORMAT, "kind": kind, "format_version": FORMAT_VERSION, **_versions(),
        "architecture": _architecture_bytes(module), "state_dict": module.state_dict(),
        "description": _describe(module), "metadata": _jsonable(dict(metadata or {})),
    }


def _jsonable(obj):
    """``obj`` as plain JSON types (numpy scalars and arrays become numbers and lists), so the
    file stays readable with ``weights_only=True``; anything else is stored as its ``str``."""
    def default(v):
        if isinstance(v, (np.generic, np.ndarray)):
            return v.tolist()
        if isinstance(v, torch.Tensor):
            return v.tolist()
        return str(v)

    return json.loads(json.dumps(obj, default=default))


def _write(payload: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(payload, path)
    return path


def _read_raw(path: str | os.PathLike) -> dict:
    """The payload of a flowvi file, read with ``weights_only=True``; ``FormatError`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # not a torch file at all, or one holding arbitrary objects
        npe = _npe_format(path)
        if npe is not None:
            raise FormatError(f"{path} is a flowvi NPE file ({npe}): load it with flowvi.sbi.NPE.load or flowvi.io.load") from None
        raise FormatError(f"{path} is not a flowvi file (it could not be read as one: {type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise FormatError(f"{path} is not a flowvi file (format {found!r}, expected {FORMAT!r})")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise FormatError(
            f"{path} has flowvi file format version {version} (written by flowvi {payload.get('flowvi_version')}); "
            f"this flowvi ({_versions()['flowvi_version']}) reads format version {FORMAT_VERSION}. Load it with the "
            "flowvi that wrote it and re-save, or refit."
        )
    return payload


def _npe_format(path: Path) -> str | None:
    """``"format version N"`` when ``path`` is an NPE file, else None (never raises)."""
    from .sbi.npe import SAVE_FORMAT

    try:
        payload = torch.load(path, weights_only=False, map_location="cpu")
    except Exception:
        return None
    if isinstance(payload, dict) and payload.get("format") == SAVE_FORMAT:
        return f"format version {payload.get('format_version')}"
    return None


def _read(path: str | os.PathLike, kind: str) -> dict:
    payload = _read_raw(path)
    if payload.get("kind") != kind:
        hint = {"flow": "load_flow", "vi_result": "load_result", "vae": "load_vae"}.get(payload.get("kind"), "load")
        raise FormatError(f"{path} holds a flowvi {payload.get('kind')!r}, not a {kind!r}: use flowvi.io.{hint}")
    return payload


def _rebuild(payload: dict, path, into: nn.Module | None) -> nn.Module:
    if into is None:
        try:
            module = torch.load(io.BytesIO(payload["architecture"]), weights_only=False, map_location="cpu")
        except Exception as err:
            raise FormatError(
                f"the architecture saved in {path} (a {payload['description'].get('class')}, written by flowvi "
                f"{payload.get('flowvi_version')}, torch {payload.get('torch_version')}) cannot be rebuilt by this "
                f"flowvi: {type(err).__name__}: {err}. Build the same module yourself and pass it as into=... to "
                "load only its weights."
            ) from err
        assign = True  # the skeleton holds meta tensors: take the saved tensors as they are
    else:
        module, assign = into, False
    try:
        module.load_state_dict(payload["state_dict"], assign=assign)
    except RuntimeError as err:
        raise FormatError(f"the weights in {path} do not fit this module: {err}") from None
    return module  # in the train/eval mode it was saved in (the pickled skeleton keeps the flags)


# -- flows --------------------------------------------------------------------------------------
def save_flow(flow: nn.Module, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
    """Save a ``Flow`` (architecture + weights) to ``path``; returns the path.

    Args:
        flow: any ``flowvi.flows.Flow`` (conditional or not, any layers and base).
        path: file to write (atomically; parent folders are created).
        metadata: JSON-able facts to keep with it (e.g. the target's name).
    """
    return _write(_payload("flow", flow, metadata), path)


def load_flow(path: str | os.PathLike, into: nn.Module | None = None):
    """The ``Flow`` saved by ``save_flow``, with identical log-densities (and the same
    train/eval mode, which matters for layers such as ``ActNorm``'s data-dependent init).

    ``into``: an already built flow of the same architecture to load the weights into
    (skips unpickling the saved architecture; see the module docstring).
    """
    return _rebuild(_read(path, "flow"), path, into)


# -- VI results ---------------------------------------------------------------------------------
def _diagnostics_to_dict(d) -> dict[str, Any]:
    import dataclasses

    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in dataclasses.asdict(d).items()}


def _diagnostics_from_dict(d: Mapping[str, Any]):
    from .vi.importance import ImportanceDiagnostics

    arrays = {"mean", "sd", "psis_mean", "psis_sd"}
    return ImportanceDiagnostics(**{k: (np.asarray(v, dtype=np.float64) if k in arrays else v) for k, v in d.items()})


class MissingLogProb:
    """Stands in for the log density of a ``VIResult`` loaded without one; calling it raises."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, x):
        raise RuntimeError(
            f"this VIResult was loaded from {self.path} without its log density, which is not saved (a Python "
            "callable cannot be saved in general). Pass it back: flowvi.io.load_result(path, log_prob=...) "
            "(a callable or a built-in target name). The diagnostics measured at save time are in .diagnostics."
        )


def save_result(result, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None,
                diagnostics: bool = True) -> Path:
    """Save a ``VIResult``: its flow (as ``save_flow``), trace, run facts and diagnostics.

    Args:
        result: a ``flowvi.vi.VIResult``.
        path: file to write.
        metadata: JSON-able facts (e.g. ``{"target": "banana", "family": "realnvp"}``).
        diagnostics: compute (if not yet computed; ``result.n_diagnostic`` draws, calls
            the log density) and save the importance diagnostics, so ``k_hat``, ``verdict``
            and ``summary()`` work after loading without the log density.

    The log density itself is not saved (see the module docstring).
    """
    payload = _payload("vi_result", result.flow, metadata)
    diag = None
    if "diagnostics" in result.__dict__ or (diagnostics and not isinstance(result.target, MissingLogProb)):
        diag = _jsonable(_diagnostics_to_dict(result.diagnostics))
    payload.update(
        trace=[float(v) for v in result.trace], steps=int(result.steps), converged=bool(result.converged),
        seconds=float(result.seconds), seed=int(result.seed), names=list(result.names), diagnostics=diag,
        n_diagnostic=int(result.n_diagnostic),
    )
    return _write(payload, path)


def load_result(path: str | os.PathLike, log_prob: Callable | str | None = None, into: nn.Module | None = None):
    """The ``VIResult`` saved by ``save_result``.

    Args:
        path: the file.
        log_prob: the target's log density (the same callable as at fit time), or the
            name of a built-in target (``flowvi.targets.get(name)``). ``None``: the
            result works for sampling, ``log_prob``, ``summary()`` and the saved
            diagnostics; ``elbo()`` and ``draws_and_log_weights()`` then raise.
        into: see ``load_flow``.
    """
    from .vi.result import VIResult

    payload = _read(path, "vi_result")
    flow = _rebuild(payload, path, into)
    if isinstance(log_prob, str):
        from . import targets

        log_prob = targets.get(log_prob).log_prob
    target = log_prob if log_prob is not None else MissingLogProb(os.fspath(path))
    result = VIResult(flow, target, payload["trace"], payload["steps"], payload["converged"], payload["seconds"],
                      payload["seed"], names=payload["names"])
    result.n_diagnostic = payload.get("n_diagnostic", result.n_diagnostic)
    result.metadata = dict(payload["metadata"])
    if log_prob is None and payload.get("diagnostics") is not None:
        # functools.cached_property reads the instance dict first: the saved values are served
        result.__dict__["diagnostics"] = _diagnostics_from_dict(payload["diagnostics"])
    return result


# -- VAEs ---------------------------------------------------------------------------------------
def save_vae(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None,
             history=None) -> Path:
    """Save a ``flowvi.vae.VAE`` (encoder, flow posterior, decoder: architecture + weights).

    Args:
        model: the VAE.
        path: file to write.
        metadata: JSON-able facts (data set, epochs, ...).
        history: the ``DataFrame`` that ``flowvi.vae.train`` returned (optional).
    """
    payload = _payload("vae", model, metadata)
    payload["history"] = None if history is None else _jsonable(history.to_dict("list"))
    return _write(payload, path)


def load_vae(path: str | os.PathLike, into: nn.Module | None = None):
    """The VAE saved by ``save_vae``. Its training ``history`` (a
    ``DataFrame``, or None) and ``metadata`` are set as attributes ``saved_history``
    and ``saved_metadata``. ``into``: see ``load_flow``."""
    import pandas as pd

    payload = _read(path, "vae")
    model = _rebuild(payload, path, into)
    model.saved_history = None if payload.get("history") is None else pd.DataFrame(payload["history"])
    model.saved_metadata = dict(payload["metadata"])
    return model


# -- any ---------------------------------------------------------------------------------------
def load(path: str | os.PathLike, **kwargs):
    """Whatever flowvi saved at ``path``: a ``Flow``, ``VIResult``, ``VAE`` or ``NPE``.

    ``kwargs`` go to the matching loader (e.g. ``log_prob=`` for a VI result).
    """
    path = Path(path)
    try:
        payload = _read_raw(path)
    except FormatError as err:
        if "NPE file" in str(err):
            from .sbi import NPE

            return NPE.load(path)
        raise
    loader = {"flow": load_flow, "vi_result": load_result, "vae": load_vae}.get(payload.get("kind"))
    if loader is None:
        raise FormatError(f"{path} holds a flowvi {payload.get('kind')!r}, which this flowvi cannot load (kinds: {KINDS})")
    return loader(path, **kwargs)


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """What a flowvi file holds (kind, versions, description, metadata), without rebuilding it."""
    p = _read_raw(path)
    return {k: p.get(k) for k in ("kind", "format_version", "flowvi_version", "torch_version", "description", "metadata")}


__all__ = ["FORMAT_VERSION", "FormatError", "MissingLogProb", "describe", "load", "load_flow", "load_result",
           "load_vae", "save_flow", "save_result", "save_vae"]
