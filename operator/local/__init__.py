"""kubeplex.operator.local: local mode, the operator's decision core over local processes.

``kubeplex up`` (:mod:`kubeplex.cli._local`) drives :class:`LocalMode`; the gateway, the
runtime process wrapper and the settings document are in their own modules.
"""

from kubeplex.gateway import Gateway, Replica
from kubeplex.operator.local.backend import LocalMode, ModelRun
from kubeplex.operator.local.errors import LocalModeError, ProcessError, SettingsError
from kubeplex.operator.local.settings import LocalSettings, load_settings

__all__ = [
    "Gateway",
    "LocalMode",
    "LocalModeError",
    "LocalSettings",
    "ModelRun",
    "ProcessError",
    "Replica",
    "SettingsError",
    "load_settings",
]
