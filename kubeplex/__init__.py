"""kubeplex: serve LLMs on Kubernetes under latency SLOs.

The distribution maps its top-level folders into this namespace:
``placement/`` -> :mod:`kubeplex.placement`, ``autoscaler/`` -> :mod:`kubeplex.autoscaler`,
``operator/`` -> :mod:`kubeplex.operator`, ``runtime_image/`` -> :mod:`kubeplex.runtime`,
``crds/`` -> :mod:`kubeplex.crds` (data). This module stays import-light on purpose.
"""

from pathlib import Path as _Path

from kubeplex._version import __version__
from kubeplex.errors import KubeplexError

__all__ = ["KubeplexError", "__version__"]


def _source_checkout_operator() -> None:
    """Let ``kubeplex.operator`` resolve to the checkout's ``operator/`` folder.

    That folder has no ``__init__.py`` on purpose: from the repository root a regular package
    named ``operator`` would shadow the standard library module (``python -m pip`` breaks). An
    installed wheel has ``kubeplex/operator/`` and needs nothing; an editable install's finder
    cannot map a folder without ``__init__.py``, so in a checkout the folder beside
    ``kubeplex/`` joins this package's search path, where it is a namespace subpackage.
    """
    here = _Path(__file__).resolve().parent
    folder = here.parent / "operator"
    if not (here / "operator").is_dir() and (folder / "README.md").is_file():
        __path__.append(str(folder.parent))


_source_checkout_operator()
