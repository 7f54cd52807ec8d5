"""derecho-actors: Derecho-style state machine replication for Python.

Only the version and the exception types are public so far; the actor API arrives with
later work and is absent until it works end to end.
"""

from derecho_actors.exceptions import ConfigError, DerechoError, LayoutError, WireError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DerechoError", "LayoutError", "WireError", "__version__"]
