"""Typed errors a user of derecho-actors can hit.

Every error says what went wrong and what to do about it. The module imports nothing from
the rest of the package so that the engine (``runtime``) can raise these too.
"""

from __future__ import annotations


class DerechoError(Exception):
    """Base class of every error derecho-actors raises on purpose."""


class ConfigError(DerechoError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class LayoutError(ConfigError):
    """A layout policy cannot be satisfied by any view (for example min_nodes > max_nodes)."""


class WireError(DerechoError):
    """Bytes from a peer could not be decoded into a valid frame."""
