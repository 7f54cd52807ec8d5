"""``@replicated``, ``@ordered`` and ``@p2p``: how a class declares itself replicable.

The decorators only record facts on the class and its functions; the group reads them when
the type is registered. Ordered methods must be deterministic (same calls in the same order
give the same state and results at every replica): no clocks, randomness, threads or I/O.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from derecho_actors.model.fields import persistent_fields
from derecho_actors.model.kinds import ORDERED, P2P
from derecho_actors.model.reads import read_options
from runtime.errors import ConfigError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

SERIALIZERS = ("msgpack", "cloudpickle")
ATOMIC = "atomic"
PERSISTENT = "persistent"
DELIVERY_MODES = (ATOMIC, PERSISTENT)
ON_DIVERGENCE = ("raise", "warn")
RESERVED_PARAMETERS = ("node", "consistency", "at_version", "at_time")
"""Keywords a handle takes for itself (call options), so no replicated method may use them."""
CHECK_P2P_ENV = "DERECHO_CHECK_P2P"


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
    on_divergence: str = "raise"  # replies of an ordered call that differ: "raise" or "warn"
    digest_every: int = 0  # >0: replicas compare state digests every this many ordered calls
    check_p2p: bool = False  # digest the state around every P2P call: a change is an error
    watch_history: int = 10_000  # events (da.emit) each replica keeps for watches to resume from
    # live sessions one client identity may hold (its calls beyond are refused: SessionLimit)
    max_sessions_per_caller: int = 64

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
    cls: type[T] | None = None,
    *,
    name: str | None = None,
    serializer: str = "msgpack",
    delivery: str | None = None,
    signed: bool = False,
    session_ttl: float = 3600.0,
    max_sessions: int = 100_000,
    on_divergence: str = "raise",
    digest_every: int = 0,
    check_p2p: bool | None = None,
    watch_history: int = 10_000,
    max_sessions_per_caller: int = 64,
) -> Any:
    """Make a class a replicated type. ``name`` (default: the class name) is how nodes agree
    on the type, so every node must register it under the same name.

    ``delivery``: "atomic" (a call is delivered once every replica holds it, state in memory)
    or "persistent" (each delivered call is also a version in a log on disk; results offer
    ``persisted()``). The default is persistent for a class with ``Persistent`` fields, else
    atomic. ``signed=True`` signs every log record with the node's own key (the key of its
    certificate) and has replicas check each other's logs with their public keys.

    ``session_ttl`` (seconds) and ``max_sessions`` bound the exactly-once state every replica
    keeps per caller (see ``replica.sessions``): a caller silent for ``session_ttl`` is forgotten, and
    a retry of one of its calls is then refused (``SessionExpired``) rather than applied twice.
    ``max_sessions_per_caller`` bounds the live sessions of one client identity (the name in
    its certificate, stamped on its calls by the node it calls through), so that one
    certificate opening sessions in a loop is refused (``SessionLimit``) while other callers
    still get sessions from the ``max_sessions`` pool. Each ``Client`` holds one session; a
    session ends ``session_ttl`` after its last call. Without TLS there are no identities and
    only ``max_sessions`` applies.
    They are part of the type, not of a node's config, because every replica must decide alike.

    Divergence checks (part of the type too: every node must check alike):

    - ``on_divergence``: what a caller does when the replicas' replies to an ordered call
      differ: "raise" (``QueryResults.get`` raises ``DivergenceError``) or "warn" (logged at
      WARNING once per call; ``get`` returns as usual).
    - ``digest_every=N``: after every N-th ordered call of a view, each replica digests its
      state (``wire.digest.state_digest``) and sends it to the shard's other replicas, which
      compare it with theirs at the same version; a mismatch is logged at ERROR and counted
      in ``status``. Costs one encoding of the whole state per N calls.
    - ``check_p2p``: digest the state before and after every ``@p2p`` call; a method that
      changed it is reported to its caller (``P2PMutationError``) and logged. A debugging aid
      (two encodings of the whole state per P2P call). Default: on if the environment
      variable ``DERECHO_CHECK_P2P`` is ``1`` when the class is decorated.

    ``watch_history``: how many change events (``da.emit`` in ordered methods) each replica
    keeps in memory, so a watch that reconnects resumes where it stopped; one that fell
    further behind is told (``WatchHistoryLost``) rather than skipping events.
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
            isinstance(max_sessions, int) and max_sessions > 0
        ):
            raise ConfigError(f"@replicated on {c.__name__}: session_ttl and max_sessions must be > 0")
        if type(max_sessions_per_caller) is not int or max_sessions_per_caller < 1:
            raise ConfigError(
                f"@replicated(max_sessions_per_caller={max_sessions_per_caller!r}) on {c.__name__}: give a number "
                "of sessions (>= 1)"
            )
        if signed and mode != PERSISTENT:
            raise ConfigError(
                f"@replicated(signed=True) on {c.__name__} needs persistent delivery (signing is of the log)"
            )
        if on_divergence not in ON_DIVERGENCE:
            raise ConfigError(
                f"@replicated(on_divergence={on_divergence!r}) on {c.__name__}: choose one of "
                f"{', '.join(ON_DIVERGENCE)}"
            )
        if type(digest_every) is not int or digest_every < 0:
            raise ConfigError(
                f"@replicated(digest_every={digest_every!r}) on {c.__name__}: give a number of ordered "
                "calls (> 0), or 0 for no digests"
            )
        if type(watch_history) is not int or watch_history < 1:
            raise ConfigError(
                f"@replicated(watch_history={watch_history!r}) on {c.__name__}: give a number of events (>= 1)"
            )
        check = os.environ.get(CHECK_P2P_ENV, "") == "1" if check_p2p is None else bool(check_p2p)
        for attr in methods:
            _check_parameters(c.__name__, attr, getattr(c, attr))
        c.__derecho__ = TypeSpec(  # type: ignore[attr-defined]
            name or c.__name__,
            c,
            methods,
            serializer,
            mode,
            signed,
            fields,
            float(session_ttl),
            max_sessions,
            on_divergence,
            digest_every,
            check,
            watch_history,
            max_sessions_per_caller,
        )
        return c

    return wrap(cls) if cls is not None else wrap


def _check_parameters(cls_name: str, method: str, fn: Any) -> None:
    """A method may not take a parameter a handle keeps for itself: ``kv.get(k, node=2)``
    would never reach it."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C function: nothing to check
        return
    clash = [p for p in params if p in RESERVED_PARAMETERS]
    if clash:
        raise ConfigError(
            f"{cls_name}.{method} takes a parameter named {clash[0]!r}, which handles reserve for call options "
            f"({', '.join(p + '=' for p in RESERVED_PARAMETERS)}); rename it"
        )


def method_caller(spec: TypeSpec, method: str, invoke: Callable[..., Any]) -> Callable[..., Any]:
    """What ``handle.<method>`` returns, for group and client handles alike:
    ``invoke(args, kwargs, node, read)`` after the checks every handle makes; ``read`` is the
    call's ``ReadOptions`` (None for a plain call: nothing else to carry). ``invoke`` is made
    for this one method (its name and kind are its own, not passed per call)."""
    from runtime.errors import UnknownMethod

    kind = spec.methods.get(method)
    if kind is None:
        raise UnknownMethod(
            f"{spec.name} has no @ordered or @p2p method {method!r} (known: {', '.join(sorted(spec.methods))})"
        )

    def call(
        *args: Any,
        node: int | None = None,
        consistency: str | None = None,
        at_version: int | None = None,
        at_time: int | None = None,
        **kwargs: Any,
    ) -> Any:
        if node is not None and kind == ORDERED:
            raise UnknownMethod(f"{spec.name}.{method} is ordered: it runs on every replica, node= does not apply")
        if consistency is None and at_version is None and at_time is None:
            return invoke(args, kwargs, node, None)
        return invoke(args, kwargs, node, read_options(spec, method, kind, consistency, at_version, at_time))

    call.__name__ = method
    return call


def spec_of(cls: Any) -> TypeSpec | None:
    spec = getattr(cls, "__derecho__", None)
    return spec if isinstance(spec, TypeSpec) and spec.cls is cls else None
