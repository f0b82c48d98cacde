"""Settings from the environment (and a `.env` file), validated once at start-up.

`table.py` has one row per setting (variable, field, parser, default, how `check-config`
shows it) and `Settings`, which reads them; `values.py` parses and shows single values and
holds `Secret`. A bad value is one `ConfigError` line naming its variable.
"""

from .table import VARIABLES, Settings, read_setting
from .values import (
    DEFAULT_CONFIG_FILE,
    DEFAULT_OSMA_API_VERSION,
    MODES,
    OGSM_API_PATH,
    PREFIX,
    Secret,
    key_mode,
)

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_OSMA_API_VERSION",
    "MODES",
    "OGSM_API_PATH",
    "PREFIX",
    "VARIABLES",
    "Secret",
    "Settings",
    "key_mode",
    "read_setting",
]
