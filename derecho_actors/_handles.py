"""``Layout`` (which replicated types a group runs, in how many shards) and ``Handle`` (the
object whose attribute calls become ordered multicasts or P2P requests of one shard)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence

from derecho_actors._aio import AsyncHandle
from derecho_actors._consistency import ReadOptions
from derecho_actors._decorators import TypeSpec, method_caller, spec_of
from derecho_actors._results import QueryResults
from runtime.core.layout import LayoutPolicy, ShardId, ShardPolicy
from runtime.errors import ConfigError, NotRegistered

__all__ = ["Handle", "Layout"]


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


class Caller(Protocol):
    """What a handle calls through (the group's router)."""

    def call(
        self,
        spec: TypeSpec,
        shard: ShardId,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        node: int | None,
        read: ReadOptions | None = None,
    ) -> QueryResults: ...


class Handle:
    """Calls the methods of one shard's replicas: ``handle.put(k, v)`` returns QueryResults.
    P2P methods take an optional ``node=`` keyword choosing the replica."""

    def __init__(self, caller: Caller, spec: TypeSpec, shard: ShardId) -> None:
        self._caller = caller
        self._spec = spec
        self.shard = shard

    @property
    def aio(self) -> AsyncHandle:
        """The same calls for asyncio code: ``await h.aio.put(k, v)`` (a member's calls never
        wait for room: the node queues them for the next multicast)."""
        return AsyncHandle(self._method, None)

    def _method(self, method: str) -> Callable[..., QueryResults]:
        spec, caller, shard = self._spec, self._caller, self.shard
        return method_caller(
            spec, method, lambda m, kind, a, kw, node, read: caller.call(spec, shard, m, a, kw, node, read)
        )

    def __getattr__(self, method: str) -> Callable[..., QueryResults]:
        spec, caller, shard = self._spec, self._caller, self.shard
        return method_caller(
            spec, method, lambda m, kind, a, kw, node, read: caller.call(spec, shard, m, a, kw, node, read)
        )

    def __repr__(self) -> str:
        return f"<Handle {self.shard}>"


def shard_id_of(cls: type, shard: int = 0, subgroup: int = 0) -> ShardId:
    """The id of a shard of a replicated type (by its registered name)."""
    spec = spec_of(cls)
    return ShardId(spec.name if spec is not None else getattr(cls, "__name__", str(cls)), subgroup, shard)


def registered_specs(types: Sequence[type], layout: Layout) -> dict[str, TypeSpec]:
    """The types a group hosts, by name: every one ``@replicated`` and given a layout policy."""
    specs: dict[str, TypeSpec] = {}
    for cls in list(types) + layout.types:
        spec = spec_of(cls)
        if spec is None:
            raise NotRegistered(f"{getattr(cls, '__name__', cls)!r} is not a @replicated class")
        specs[spec.name] = spec
    missing = [n for n in specs if n not in dict(layout.policy.types)]
    if missing:
        raise ConfigError(f"no layout policy for replicated type(s) {', '.join(missing)}")
    return specs
