"""``@replicated``, ``@ordered`` and ``@p2p``: how a class declares itself replicable.

The decorators only record facts on the class and its functions; the group reads them when
the type is registered. Ordered methods must be deterministic (same calls in the same order
give the same state and results at every replica): no clocks, randomness, threads or I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from runtime.errors import ConfigError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

ORDERED = "ordered"
P2P = "p2p"
SERIALIZERS = ("msgpack", "cloudpickle")
ATOMIC = "atomic"
PERSISTENT = "persistent"
DELIVERY_MODES = (ATOMIC, PERSISTENT)


@dataclass(frozen=True, slots=True)
class TypeSpec:
    name: str
    cls: type
    methods: dict[str, str]  # method name -> ORDERED | P2P
    serializer: str
    delivery: str = ATOMIC  # ATOMIC | PERSISTENT
    signed: bool = False  # persistent logs signed with the node's key
    fields: tuple[str, ...] = ()  # names of Persistent fields
    session_ttl: float = 3600.0  # seconds a caller's exactly-once session lives without calls
    max_sessions: int = 100_000  # sessions a replica keeps at most (new ones are refused beyond)

    @property
    def persistent(self) -> bool:
        return self.delivery == PERSISTENT


def ordered(fn: F) -> F:
    """Mark a method as an ordered call: totally ordered, run by every replica of the shard."""
    fn.__derecho_kind__ = ORDERED  # type: ignore[attr-defined]
    return fn


def p2p(fn: F) -> F:
    """Mark a method as a P2P call: run by one replica; it must not change replicated state."""
    fn.__derecho_kind__ = P2P  # type: ignore[attr-defined]
    return fn


def replicated(
    cls: type[T] | None = None, *, name: str | None = None, serializer: str = "msgpack",
    delivery: str | None = None, signed: bool = False, session_ttl: float = 3600.0, max_sessions: int = 100_000,
) -> Any:
    """Make a class a replicated type. ``name`` (default: the class name) is how nodes agree
    on the type, so every node must register it under the same name.

    ``delivery``: "atomic" (a call is delivered once every replica holds it, state in memory)
    or "persistent" (each delivered call is also a version in a log on disk; results offer
    ``persisted()``). The default is persistent for a class with ``Persistent`` fields, else
    atomic. ``signed=True`` signs every log record with the node's own key (the key of its
    certificate) and has replicas check each other's logs with their public keys.

    ``session_ttl`` (seconds) and ``max_sessions`` bound the exactly-once state every replica
    keeps per caller (see ``_sessions``): a caller silent for ``session_ttl`` is forgotten, and
    a retry of one of its calls is then refused (``SessionExpired``) rather than applied twice.
    They are part of the type, not of a node's config, because every replica must decide alike.
    """

    def wrap(c: type[T]) -> type[T]:
        if not isinstance(c, type):
            raise ConfigError(f"@replicated decorates classes, not {c!r}")
        if serializer not in SERIALIZERS:
            raise ConfigError(f"@replicated(serializer={serializer!r}): choose one of {', '.join(SERIALIZERS)}")
        methods = {}
        for attr in dir(c):
            kind = getattr(getattr(c, attr, None), "__derecho_kind__", None)
            if kind in (ORDERED, P2P):
                methods[attr] = kind
        if not methods:
            raise ConfigError(f"@replicated class {c.__name__} has no @ordered or @p2p method")
        from derecho_actors._persistent import persistent_fields

        fields = tuple(persistent_fields(c))
        mode = delivery or (PERSISTENT if fields else ATOMIC)
        if mode not in DELIVERY_MODES:
            raise ConfigError(f"@replicated(delivery={delivery!r}): choose one of {', '.join(DELIVERY_MODES)}")
        if fields and mode != PERSISTENT:
            raise ConfigError(
                f"{c.__name__} declares Persistent fields ({', '.join(fields)}) but delivery={mode!r}; "
                "drop delivery= or use delivery='persistent'"
            )
        if not (isinstance(session_ttl, (int, float)) and session_ttl > 0) or not (
                isinstance(max_sessions, int) and max_sessions > 0):
            raise ConfigError(f"@replicated on {c.__name__}: session_ttl and max_sessions must be > 0")
        if signed and mode != PERSISTENT:
            raise ConfigError(f"@replicated(signed=True) on {c.__name__} needs persistent delivery (signing is of the log)")
        c.__derecho__ = TypeSpec(  # type: ignore[attr-defined]
            name or c.__name__, c, methods, serializer, mode, signed, fields, float(session_ttl), max_sessions
        )
        return c

    return wrap(cls) if cls is not None else wrap


def method_caller(spec: TypeSpec, method: str, invoke: Callable[..., Any]) -> Callable[..., Any]:
    """What ``handle.<method>`` returns, for group and client handles alike:
    ``invoke(method, kind, args, kwargs, node)`` after the checks every handle makes."""
    from runtime.errors import UnknownMethod

    kind = spec.methods.get(method)
    if kind is None:
        raise UnknownMethod(
            f"{spec.name} has no @ordered or @p2p method {method!r} (known: {', '.join(sorted(spec.methods))})"
        )

    def call(*args: Any, node: int | None = None, **kwargs: Any) -> Any:
        if node is not None and kind == ORDERED:
            raise UnknownMethod(f"{spec.name}.{method} is ordered: it runs on every replica, node= does not apply")
        return invoke(method, kind, args, kwargs, node)

    call.__name__ = method
    return call


def spec_of(cls: Any) -> TypeSpec | None:
    spec = getattr(cls, "__derecho__", None)
    return spec if isinstance(spec, TypeSpec) and spec.cls is cls else None
