"""One way to write a file: a crash leaves the old file or the new one, never half of one."""
from __future__ import annotations

import os

import torch


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through ``<path>.tmp`` and ``os.replace`` (atomic on POSIX)."""
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)
