"""``SimulationStore``: an on-disk, append-as-you-go store for a simulation campaign.

Layout of the store directory::

    manifest.json          format, version, campaign settings, one entry per finished batch
    batch_000000.pt        {"theta", "x"} (valid rows), "theta_invalid", "index" (rows kept)
    batch_000001.pt        ...

A batch file is written first (to a temporary name, then renamed) and only then
recorded in the manifest (also written atomically), so a crash at any moment
leaves either a complete batch that is listed or one that is not: a resumed
campaign re-runs exactly the unlisted batches and every simulation is stored
once. Only the process driving the campaign writes; workers just simulate.
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import Tensor

from .._atomic import save_atomic

STORE_FORMAT = "flowvi.sbi.store"
STORE_VERSION = 1


class StoreMismatchError(ValueError):
    """The store on disk belongs to a different campaign (seed, batch size, ...)."""


class SimulationStore:
    """A directory holding a campaign's simulations, batch by batch.

    Args:
        path: directory (created when missing).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._manifest: dict[str, Any] | None = None

    # -- manifest ---------------------------------------------------------------------------
    @property
    def manifest_path(self) -> str:
        return os.path.join(self.path, "manifest.json")

    def exists(self) -> bool:
        return os.path.exists(self.manifest_path)

    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            if not self.exists():
                raise FileNotFoundError(f"no simulation store at {self.path} (no manifest.json)")
            with open(self.manifest_path) as f:
                m = json.load(f)
            if m.get("format") != STORE_FORMAT:
                raise StoreMismatchError(f"{self.path} is not a flowvi simulation store")
            if m.get("version") != STORE_VERSION:
                raise StoreMismatchError(
                    f"{self.path} has store version {m.get('version')}; this flowvi reads version {STORE_VERSION}"
                )
            self._manifest = m
        return self._manifest

    def _write_manifest(self) -> None:
        tmp = self.manifest_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self._manifest, f, indent=1)
        os.replace(tmp, self.manifest_path)

    def open(self, settings: dict[str, Any]) -> "SimulationStore":
        """Create the store for a campaign, or check that an existing one has the same ``settings``."""
        os.makedirs(self.path, exist_ok=True)
        if self.exists():
            old = self.manifest()["settings"]
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            if diff:
                raise StoreMismatchError(
                    f"the store at {self.path} was started with other settings {diff} (stored, requested); "
                    "resume with the same n, batch_size and seed, or use a new store"
                )
        else:
            self._manifest = {"format": STORE_FORMAT, "version": STORE_VERSION, "settings": dict(settings), "batches": {}}
            self._write_manifest()
        return self

    # -- batches ------------------------------------------------------------------------------
    def finished(self) -> dict[int, dict[str, Any]]:
        """``{batch index: record}`` of every batch written so far."""
        return {int(k): v for k, v in self.manifest()["batches"].items()}

    def write_batch(self, index: int, theta: Tensor, x: Tensor, *, kept: Tensor, theta_invalid: Tensor,
                    record: dict[str, Any]) -> None:
        """Store batch ``index``: valid rows ``theta (m, d)``, ``x (m, ...)``, their row numbers
        ``kept (m,)`` in the batch, the invalid rows' ``theta_invalid`` and a JSON ``record``."""
        name = f"batch_{index:06d}.pt"
        target = os.path.join(self.path, name)
        save_atomic({"theta": theta, "x": x, "index": kept, "theta_invalid": theta_invalid}, target)
        m = self.manifest()
        m["batches"][str(int(index))] = dict(record, file=name)
        self._write_manifest()

    def read_batch(self, index: int) -> dict[str, Tensor]:
        rec = self.finished()[int(index)]
        return torch.load(os.path.join(self.path, rec["file"]), weights_only=True)

    def load(self) -> tuple[Tensor, Tensor]:
        """All valid simulations, in batch order: ``theta (N, d)``, ``x (N, ...)``."""
        parts = [self.read_batch(k) for k in sorted(self.finished())]
        parts = [p for p in parts if p["theta"].shape[0] > 0] or parts[:1]
        if not parts:
            raise ValueError(f"the store at {self.path} holds no simulations yet")
        return torch.cat([p["theta"] for p in parts]), torch.cat([p["x"] for p in parts])

    def invalid_theta(self) -> Tensor:
        """Parameters whose simulation failed or returned NaN/inf, ``(M, d)`` (for inspection)."""
        parts = [self.read_batch(k)["theta_invalid"] for k in sorted(self.finished())]
        return torch.cat(parts) if parts else torch.empty(0)

    def __repr__(self) -> str:
        n = len(self.finished()) if self.exists() else 0
        return f"SimulationStore({self.path!r}, batches={n})"
