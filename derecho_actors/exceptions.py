"""The typed errors a user of derecho-actors can hit, re-exported from the engine.

They are defined in ``runtime.errors`` because the engine raises them too and must not import
the user-facing package; users import them from here or from ``derecho_actors``.
"""

from runtime.errors import *  # noqa: F401,F403
from runtime.errors import __all__  # noqa: F401
