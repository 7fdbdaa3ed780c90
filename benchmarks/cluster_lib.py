"""Shared by the benchmark scripts: the control-plane library ``e2e/cluster/cluster.py``
(etcd, kube-apiserver, KWOK nodes), loaded by path because ``e2e/`` is no package.

The scripts run by path (``python benchmarks/<area>/scale.py``), so each puts ``benchmarks/``
on ``sys.path`` before importing this module.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["CLUSTER_PY", "load_cluster"]

CLUSTER_PY = Path(__file__).resolve().parents[1] / "e2e" / "cluster" / "cluster.py"


def load_cluster() -> ModuleType:
    """The cluster library as a module (registered in ``sys.modules``: its dataclasses look
    their module up there)."""
    spec = importlib.util.spec_from_file_location("kubeplex_e2e_cluster", CLUSTER_PY)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {CLUSTER_PY}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
