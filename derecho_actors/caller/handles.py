"""``Handle`` (the object whose attribute calls become ordered multicasts or P2P requests of one
shard) and the ``Caller`` protocol it calls through, which a member's router and a ``Client``
both implement; and the checks of the types a group hosts."""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from derecho_actors.caller.aio import AsyncHandle
from derecho_actors.caller.results import QueryResults
from derecho_actors.model.decorators import TypeSpec, method_caller, spec_of
from derecho_actors.model.layout import Layout
from derecho_actors.model.reads import ReadOptions
from derecho_actors.wire.events import PollArgs
from runtime.core.layout import ShardId
from runtime.errors import ConfigError, NotRegistered

__all__ = ["Caller", "Handle", "WindowedCaller"]


class Caller(Protocol):
    """What handles and watches call through: a member's router (``node.member_caller.MemberCaller``) or a
    ``Client``. Both return the same ``QueryResults``, fed through its producer side."""

    def call(
        self,
        spec: TypeSpec,
        shard: ShardId,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        node: int | None,
        read: ReadOptions | None = None,
    ) -> QueryResults:
        """Issue one call of ``spec``'s ``method`` to ``shard`` (P2P: to replica ``node``, or
        any); waits for room if the caller has a window and it is full."""
        ...

    def watch_poll(self, shard: ShardId, what: str, poll: PollArgs, node: int | None) -> QueryResults:
        """Send one long poll of a watch (``caller.watch``) to a replica of ``shard``."""
        ...


@runtime_checkable
class WindowedCaller(Caller, Protocol):
    """A caller with a window of calls in flight (a ``Client``'s ``max_outstanding``): asyncio
    code awaits room instead of blocking its loop. A member's calls never wait for room (the
    node queues them for the next multicast), so its router is a plain ``Caller``."""

    def try_call(
        self,
        spec: TypeSpec,
        shard: ShardId,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        node: int | None,
        read: ReadOptions | None = None,
    ) -> QueryResults | None:
        """``call``, or None instead of waiting when the window is full."""
        ...

    def wait_for_room(self, timeout: float) -> bool:
        """Block until the window has room (True) or ``timeout`` seconds pass (False)."""
        ...


class Handle:
    """Calls the methods of one shard's replicas: ``handle.put(k, v)`` returns QueryResults.
    P2P methods take an optional ``node=`` keyword choosing the replica. The same class serves
    members (``group.handle``) and clients (``client.handle``): it calls through a ``Caller``."""

    def __init__(self, caller: Caller, spec: TypeSpec, shard: ShardId) -> None:
        self._caller = caller
        self._spec = spec
        self.shard = shard

    @property
    def aio(self) -> AsyncHandle:
        """The same calls for asyncio code: ``await h.aio.put(k, v)``; waiting for room in a
        client's window (``max_outstanding``) is an ``await``, never a blocked loop."""
        caller = self._caller
        if isinstance(caller, WindowedCaller):
            return AsyncHandle(lambda method: self._method(method, block=False), caller.wait_for_room)
        return AsyncHandle(self._method, None)

    def __getattr__(self, method: str) -> Callable[..., QueryResults]:
        # Only for a name the handle does not have yet: made once, then kept as an attribute
        # (``handle.put`` costs a dict lookup from the second call on, not a new closure).
        if method.startswith("__"):  # copy, pickle and friends probe for dunders: not methods
            raise AttributeError(method)
        fn = self._method(method)
        self.__dict__[method] = fn
        return fn

    def _method(self, method: str, block: bool = True) -> Callable[..., Any]:
        """``handle.<method>``, issued through the caller's ``call`` (``try_call`` if not
        ``block``: only a ``WindowedCaller`` is asked). A caller with a ``prepare_method``
        (a ``Client``) works out once what is the same for every call of the method."""
        spec, shard, caller = self._spec, self.shard, self._caller
        invoke: Callable[[tuple[Any, ...], dict[str, Any], int | None, ReadOptions | None], Any]
        prepare = getattr(caller, "prepare_method", None)
        if prepare is not None:
            invoke = prepare(spec, shard, method, block)
        else:
            send = caller.call if block else caller.try_call  # type: ignore[attr-defined]
            invoke = lambda a, kw, node, read: send(spec, shard, method, a, kw, node, read)  # noqa: E731
        return method_caller(spec, method, invoke)

    def __repr__(self) -> str:
        return f"<Handle {self.shard}>"


def spec_checked(cls: type) -> TypeSpec:
    """The spec of a ``@replicated`` class; ``NotRegistered`` for anything else."""
    spec = spec_of(cls)
    if spec is None:
        raise NotRegistered(f"{getattr(cls, '__name__', cls)!r} is not a @replicated class")
    return spec


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
