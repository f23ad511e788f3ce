"""Pyro guides built on flowvi's flow families."""
from .autoflow import AutoFlow

__all__ = ["AutoFlow"]
