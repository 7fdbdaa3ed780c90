"""kubeplex: serve LLMs on Kubernetes under latency SLOs.

The distribution maps its top-level folders into this namespace:
``placement/`` -> :mod:`kubeplex.placement`, ``autoscaler/`` -> :mod:`kubeplex.autoscaler`,
``operator/`` -> :mod:`kubeplex.operator`, ``runtime_image/`` -> :mod:`kubeplex.runtime`,
``crds/`` -> :mod:`kubeplex.crds` (data). This module stays import-light on purpose.
"""

from kubeplex._version import __version__
from kubeplex.errors import KubeplexError

__all__ = ["KubeplexError", "__version__"]
