"""Shipped calibrated latency profiles (measured with ``kubeplex calibrate``; see
docs/benchmarks.md "Calibration" for how, where, and each fit's error).

A name here works wherever a model shape name does (``spec.model.profile``, ``kubeplex
simulate autoscale --profile``): :func:`kubeplex.placement.llm.model` returns the catalogue
shape carrying the measurements. The full files, with the measured points, are under
``benchmarks/calibration/results/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from kubeplex.placement.calibration import Calibration

__all__ = ["CALIBRATED"]

CALIBRATED: Mapping[str, Calibration] = MappingProxyType({})
