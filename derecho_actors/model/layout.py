"""``Layout``: which replicated types a group runs and how each is split into shards (a
``ShardPolicy`` per type), as users write it."""

from __future__ import annotations

from typing import Mapping

from derecho_actors.model.decorators import spec_of
from runtime.core.layout import LayoutPolicy, ShardPolicy
from runtime.errors import ConfigError, NotRegistered

__all__ = ["Layout"]


class Layout:
    """Which replicated types the group runs and how each is split into shards."""

    def __init__(self, policies: Mapping[type, ShardPolicy]) -> None:
        specs = {}
        durable = set()
        for cls, policy in policies.items():
            spec = spec_of(cls)
            if spec is None:
                raise NotRegistered(f"{getattr(cls, '__name__', cls)!r} is not a @replicated class")
            if not isinstance(policy, ShardPolicy):
                raise ConfigError(f"the layout of {spec.name} must be a ShardPolicy, got {policy!r}")
            specs[spec.name] = policy
            if spec.persistent:
                durable.add(spec.name)
        self.policy = LayoutPolicy.of(specs, frozenset(durable))
        self.types = [cls for cls in policies]
