"""The worker's configuration: one typed, validated settings object.

:func:`load_settings` reads the YAML file of CONTRACT section 6 and the ``KD_``
environment variables (``_loading``) into :class:`Settings` (``_schema``);
every problem is a :class:`ConfigError` naming the key (``_checks``).
docs/configuration.md lists every key.
"""

from worker.settings._checks import ConfigError
from worker.settings._loading import ENV_PREFIX, load_settings
from worker.settings._schema import (
    AuthSettings,
    DestinationSettings,
    KafkaSettings,
    RuntimeSettings,
    SegmentSettings,
    Settings,
)

__all__ = [
    "ENV_PREFIX",
    "AuthSettings",
    "ConfigError",
    "DestinationSettings",
    "KafkaSettings",
    "RuntimeSettings",
    "SegmentSettings",
    "Settings",
    "load_settings",
]
