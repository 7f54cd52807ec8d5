"""Node configuration: a TOML file, then environment variables, then ``--set`` flags.

One node reads one configuration. Each layer overrides the one before it, per key:

    CLI (``--set section.key=value``) > environment (``DERECHO_<SECTION>_<KEY>``) > file > default

Every setting has a default that works on one machine, so ``load_config(None)`` gives a node
that founds a one-member group on ``127.0.0.1:7000``. The file looks like::

    [node]
    id = 1
    listen = "127.0.0.1:7000"
    contacts = ["127.0.0.1:7001"]     # empty: found a new group
    app = ["examples.kv_store:KV"]    # replicated classes to host (derecho-actors node --app)
    metrics = "127.0.0.1:9100"        # Prometheus /metrics and /health/...; empty: none
    data_dir = "./derecho-data"
    log_level = "INFO"
    cluster = "derecho"
    [timeouts]
    heartbeat_ms = 50
    suspicion_ms = 500
    join_retry_ms = 500
    connect_timeout_ms = 2000
    [multicast]
    window_size = 10000
    window_bytes = 33554432
    max_batch = 1000
    max_message_size = 1048576
    null_interval_ms = 1.0
    immediate_nulls = true
    max_frame_bytes = 67108864
    [security]
    certs_dir = "/etc/derecho/certs"  # ca.crt, node-<id>.crt, node-<id>.key
    allowed_members = [1, 2, 3]       # optional allow-list of member ids
    [layout.KV]                       # zero or more, one per replicated type, in policy order
    subgroups = 1
    shards = 2
    min_nodes = 1
    max_nodes = 3
    reserved = [[1, 2], [3]]
    overlapping = false

Why so strict: a node started with a typo (``hearbeat_ms``) or a value of the wrong type would
otherwise run with a default nobody chose, and the mistake would show up much later as an odd
failure detector or an inadequate layout. So an unknown section or key, a value of the wrong
type or out of range, and settings that contradict each other all raise
:class:`~runtime.errors.ConfigError` at start-up with one line that names the field
(``node.id: expected an integer >= 0, got "abc" (from DERECHO_NODE_ID)``), and where the
value came from when it did not come from the defaults.

Environment variables exist for every flat section (all but the layout;
``DERECHO_NODE_CONTACTS`` and ``DERECHO_SECURITY_ALLOWED_MEMBERS`` take comma-separated lists).
A variable that starts like one of them (``DERECHO_NODE_``, ``DERECHO_SECURITY_``, ...) but
names no key is an error, to catch typos;
other ``DERECHO_*`` variables are left to whoever reads them. Layout types are named by case-
sensitive class names, which environment variable names do not carry well, so the layout is set
in the file or with ``--set layout.<Type>.<key>=value``.

The module reads the configuration file and, when asked to, ``os.environ``; it opens no socket
and creates no directory (``data_dir`` is the driver's to create).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.core.layout import LayoutPolicy, ShardPolicy
from runtime.core.membership import MembershipConfig
from runtime.core.node_core import CoreConfig
from runtime.core.object_policy import ObjectPolicy
from runtime.core.rdmc_schedule import ScheduleKind
from runtime.core.smc import MulticastConfig
from runtime.errors import ConfigError, LayoutError

__all__ = [
    "DEFAULT_LAYOUT_TYPE",
    "ENV_PREFIX",
    "LOG_LEVELS",
    "LimitsSection",
    "MulticastSection",
    "NodeConfig",
    "NodeSection",
    "SecuritySection",
    "TimeoutsSection",
    "example_config",
    "load_config",
    "parse_override",
]

ENV_PREFIX = "DERECHO_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# What a node removed from the group, or cut off from its majority, does (node.on_partition).
ON_PARTITION = ("rejoin", "exit")
# How a node reaches its peers (node.transport); see runtime.drivers.shm_transport.
TRANSPORTS = ("auto", "tcp", "shm", "rdma")
DEFAULT_LAYOUT_TYPE = "default"
_LAYOUT_KEYS = ("subgroups", "shards", "min_nodes", "max_nodes", "reserved", "overlapping")
_SHOW_LIMIT = 200  # non-string values (lists, tables) are cut here; strings are shown whole
_SHOW_STR_LIMIT = 4096  # a path is never cut: its file name is what the user needs to see


# --------------------------------------------------------------------------- value checks
class _Invalid(Exception):
    """A value failed its field's check; the caller adds the field name and the source.

    ``colon`` picks the shape of the final message: ``key: expected ..., got ...`` for a value
    of the wrong kind, ``key must be >= 1, got 0`` for one of the right kind out of range.
    ``subkey`` narrows the field, e.g. ``[1]`` for the second contact.
    """

    def __init__(self, detail: str, *, colon: bool = True, subkey: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.colon = colon
        self.subkey = subkey

    def message(self, key: str, source: str = "") -> str:
        """The one-line ConfigError text for this failure of field ``key``."""
        name = key + self.subkey
        text = f"{name}: {self.detail}" if self.colon else f"{name} {self.detail}"
        return _one_line(text + (f" ({source})" if source else ""))


def _one_line(text: str) -> str:
    """Error messages are single lines so log scrapers and CLIs can show them whole."""
    return " ".join(text.splitlines())


def _show(value: object) -> str:
    """A value as the user would write it in TOML, on one line and cut to a sane length.

    JSON is close enough to TOML for scalars and arrays (strings in double quotes, booleans in
    lower case) and escapes newlines, so a hostile value cannot break the one-line rule.
    """
    try:
        text = json.dumps(value, default=str)
    except ValueError:  # circular structures cannot come from TOML, but be safe
        text = repr(value)
    limit = _SHOW_STR_LIMIT if isinstance(value, str) else _SHOW_LIMIT
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _is_int(value: object) -> bool:
    """True for real ints: a bool is an int to Python but never a sensible count or id."""
    return isinstance(value, int) and not isinstance(value, bool)


_INT_TEXT = re.compile(r"[+-]?\d+(?:_\d+)*")


MAX_NODE_ID = 0xFFFFFFFF
"""Node ids are unsigned 32-bit numbers (they travel in every frame; a bigger id would fail
far from the config, in the wire encoder)."""

_MAX_INT = (1 << 63) - 1  # what msgpack and the wire format carry


def _int_check(minimum: int, maximum: int = _MAX_INT) -> Callable[[object], int]:
    """Check an int in ``minimum..maximum``; the type message states the bound so one error
    says all."""

    def check(value: object) -> int:
        if not _is_int(value):
            raise _Invalid(f"expected an integer >= {minimum}, got {_show(value)}")
        assert isinstance(value, int)
        if value < minimum:
            raise _Invalid(f"must be >= {minimum}, got {value}", colon=False)
        if value > maximum:
            raise _Invalid(f"must be <= {maximum}, got {value}", colon=False)
        return value

    return check


def _int_text(minimum: int) -> Callable[[str], object]:
    """Parse an integer written as text; anything else fails with the field's expectation."""

    def parse(text: str) -> object:
        stripped = text.strip()
        if not _INT_TEXT.fullmatch(stripped):
            raise _Invalid(f"expected an integer >= {minimum}, got {_show(text)}")
        return int(stripped)

    return parse


def _float_check(value: object) -> float:
    """A finite number >= 0; ints are fine (``1`` ms), bools and NaN are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(f"expected a number >= 0, got {_show(value)}")
    if not math.isfinite(value):
        raise _Invalid(f"expected a finite number >= 0, got {_show(value)}")
    if value < 0:
        raise _Invalid(f"must be >= 0, got {value}", colon=False)
    return float(value)


def _float_text(text: str) -> object:
    """Parse a number written as text (``1``, ``0.5``, ``1e-3``)."""
    try:
        return float(text.strip())
    except ValueError:
        raise _Invalid(f"expected a number >= 0, got {_show(text)}") from None


def _bool_text(text: str) -> object:
    """Parse the usual spellings of a boolean, so ``--set ...overlapping=yes`` works."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise _Invalid(f"expected true or false, got {_show(text)}")


def _bool_check(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_show(value)}")
    return value


def _path_or_empty(value: object) -> str:
    """A path, or "" for none."""
    if value == "":
        return ""
    return _nonempty_str(value)


def _nonempty_str(value: object) -> str:
    """A non-blank single-line string (names and paths end up in log lines and messages)."""
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"expected a non-empty string, got {_show(value)}")
    if not value.isprintable():
        raise _Invalid(f"must not contain control characters, got {_show(value)}", colon=False)
    return value


def _log_level(value: object) -> str:
    """One of LOG_LEVELS, any case; stored upper-case as ``logging`` wants it."""
    if isinstance(value, str) and value.strip().upper() in LOG_LEVELS:
        return value.strip().upper()
    raise _Invalid(f"expected one of {', '.join(LOG_LEVELS)}, got {_show(value)}")


def _on_partition(value: object) -> str:
    """One of ON_PARTITION, any case."""
    if isinstance(value, str) and value.strip().lower() in ON_PARTITION:
        return value.strip().lower()
    raise _Invalid(f"expected one of {', '.join(ON_PARTITION)}, got {_show(value)}")


def _transport(value: object) -> str:
    """One of TRANSPORTS, any case. Whether "rdma" can run here (pyverbs, a device) is found at
    start, where the node refuses with exit code 7 if not (runtime.drivers.rdma_transport)."""
    if isinstance(value, str) and value.strip().lower() in TRANSPORTS:
        return value.strip().lower()
    raise _Invalid(f"expected one of {', '.join(TRANSPORTS)}, got {_show(value)}")


SCHEDULES = tuple(kind.value for kind in ScheduleKind)


def _schedule(value: object) -> str:
    """One of SCHEDULES, any case."""
    if isinstance(value, str) and value.strip().lower() in SCHEDULES:
        return value.strip().lower()
    raise _Invalid(f"expected one of {', '.join(SCHEDULES)}, got {_show(value)}")


def _split_host_port(text: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` -> (host, port); None when the shape is wrong.

    The port range is checked by the caller, which knows whether 0 is allowed.
    """
    if text.startswith("["):
        close = text.find("]:")
        if close < 2:
            return None
        host, port = text[1:close], text[close + 2 :]
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:  # a bare IPv6 address needs brackets to be unambiguous
            return None
    if not host or not port.isascii() or not port.isdigit():
        return None
    if any(ch.isspace() for ch in host) or not host.isprintable():
        return None
    return host, int(port)


def _address_check(value: object, lowest_port: int) -> str:
    """Check one ``host:port`` string; ``lowest_port`` is 0 for listen, 1 for a contact."""
    if not isinstance(value, str):
        raise _Invalid(f'expected "host:port", got {_show(value)}')
    parts = _split_host_port(value)
    if parts is None:
        hint = " (write an IPv6 address as [::1]:7000)" if value.count(":") > 1 else ""
        raise _Invalid(f'expected "host:port", got {_show(value)}{hint}')
    port = parts[1]
    if not lowest_port <= port <= 65535:
        raise _Invalid(f"port {port} is outside {lowest_port}..65535 in {_show(value)}")
    return value


def _listen_check(value: object) -> str:
    """The address to bind; port 0 asks the OS for a free port (useful in tests)."""
    return _address_check(value, 0)


def _metrics_check(value: object) -> str:
    """Where the metrics endpoint listens ("host:port", port 0: any free one), or "" for none."""
    if value == "":
        return ""
    return _address_check(value, 0)


def _advertise_check(value: object) -> str:
    """The address peers reach this node at, if not ``listen`` (a DNS name in a pod)."""
    if value == "":
        return ""
    return _address_check(value, 1)


def _contacts_check(value: object) -> tuple[str, ...]:
    """Addresses of members to join through; port 0 cannot be connected to, so 1..65535."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _Invalid(f'expected a list of "host:port" strings, got {_show(value)}')
    seen: set[str] = set()
    for index, item in enumerate(value):
        try:
            _address_check(item, 1)
        except _Invalid as bad:
            bad.subkey = f"[{index}]"
            raise
        if item in seen:
            raise _Invalid(f"lists {_show(item)} twice", subkey=f"[{index}]")
        seen.add(item)
    return tuple(value)


def _contacts_text(text: str) -> object:
    """Comma-separated addresses (the one list a shell variable can carry easily)."""
    return [part.strip() for part in text.split(",") if part.strip()]


_APP_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def _apps_check(value: object) -> tuple[str, ...]:
    """Replicated classes to host, each ``module:Class`` (imported as uvicorn imports apps)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _Invalid(f'expected a list of "module:Class" strings, got {_show(value)}')
    seen: set[str] = set()
    for index, item in enumerate(value):
        if not isinstance(item, str) or not _APP_SPEC.fullmatch(item):
            raise _Invalid(
                f'expected "module:Class" (e.g. "examples.kv_store:KV"), got {_show(item)}', subkey=f"[{index}]"
            )
        if item in seen:
            raise _Invalid(f"lists {_show(item)} twice", subkey=f"[{index}]")
        seen.add(item)
    return tuple(value)


def _apps_text(text: str) -> object:
    """Comma-separated ``module:Class`` entries; ``module:A,B`` names two classes of one module."""
    out: list[str] = []
    module = ""
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if ":" in part:
            module = part.split(":", 1)[0]
            out.append(part)
        else:
            out.append(f"{module}:{part}" if module else part)
    return out


def _ids_check(value: object) -> tuple[int, ...]:
    """A list of distinct node ids (an allow-list); empty means no restriction."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _Invalid(f"expected a list of node ids, got {_show(value)}")
    seen: set[int] = set()
    check = _int_check(0, MAX_NODE_ID)
    for index, item in enumerate(value):
        try:
            check(item)
        except _Invalid as bad:
            bad.subkey = f"[{index}]"
            raise
        if item in seen:
            raise _Invalid(f"lists {item} twice", subkey=f"[{index}]")
        seen.add(item)
    return tuple(value)


def _ids_text(text: str) -> object:
    """Comma-separated node ids, as an environment variable carries them."""
    out: list[object] = []
    for part in text.split(","):
        if part.strip():
            out.append(_int_text(0)(part))
    return out


def _identity(text: str) -> object:
    """Text fields need no parsing; their check does the rest."""
    return text


@dataclass(frozen=True, slots=True)
class _Field:
    """How one flat setting is parsed from text (env, CLI) and checked in native form."""

    parse_text: Callable[[str], object]
    check: Callable[[object], Any]


_FIELDS: dict[str, dict[str, _Field]] = {
    "node": {
        "id": _Field(_int_text(0), _int_check(0, MAX_NODE_ID)),
        "listen": _Field(str.strip, _listen_check),
        "advertise": _Field(str.strip, _advertise_check),
        "bootstrap_expect": _Field(_int_text(0), _int_check(0, 1000)),
        "contacts": _Field(_contacts_text, _contacts_check),
        "app": _Field(_apps_text, _apps_check),
        "metrics": _Field(str.strip, _metrics_check),
        "data_dir": _Field(_identity, _nonempty_str),
        "log_level": _Field(_identity, _log_level),
        "on_partition": _Field(_identity, _on_partition),
        "transport": _Field(_identity, _transport),
        "cluster": _Field(_identity, _nonempty_str),
    },
    "timeouts": {
        "heartbeat_ms": _Field(_int_text(1), _int_check(1)),
        "suspicion_ms": _Field(_int_text(1), _int_check(1)),
        "join_retry_ms": _Field(_int_text(1), _int_check(1)),
        "connect_timeout_ms": _Field(_int_text(1), _int_check(1)),
    },
    "multicast": {
        "window_size": _Field(_int_text(1), _int_check(1)),
        "window_bytes": _Field(_int_text(1), _int_check(1)),
        "max_batch": _Field(_int_text(1), _int_check(1)),
        "max_message_size": _Field(_int_text(1), _int_check(1)),
        "null_interval_ms": _Field(_float_text, _float_check),
        "immediate_nulls": _Field(_bool_text, _bool_check),
        "max_frame_bytes": _Field(_int_text(1), _int_check(1)),
    },
    "persistence": {
        "fsync": _Field(_bool_text, _bool_check),
        "signing_key": _Field(_identity, _path_or_empty),
        "restart_quorum_wait_ms": _Field(_int_text(0), _int_check(0)),
        "transfer_chunk_bytes": _Field(_int_text(4096), _int_check(4096)),
        "transfer_window": _Field(_int_text(1), _int_check(1)),
        "stall_timeout_ms": _Field(_int_text(1), _int_check(1)),
    },
}
_FIELDS["security"] = {
    "insecure": _Field(_bool_text, _bool_check),
    "certs_dir": _Field(_identity, _path_or_empty),
    "ca_file": _Field(_identity, _path_or_empty),
    "cert_file": _Field(_identity, _path_or_empty),
    "key_file": _Field(_identity, _path_or_empty),
    "allowed_members": _Field(_ids_text, _ids_check),
    "handshake_timeout_ms": _Field(_int_text(1), _int_check(1)),
    "max_unauthenticated": _Field(_int_text(1), _int_check(1)),
    "receive_budget_bytes": _Field(_int_text(1 << 20), _int_check(1 << 20)),
    "client_idle_timeout_ms": _Field(_int_text(1), _int_check(1)),
    "max_unauthenticated_per_address": _Field(_int_text(1), _int_check(1)),
    "revocation_file": _Field(_identity, _path_or_empty),
    "metrics_tls": _Field(_bool_text, _bool_check),
}
_FIELDS["limits"] = {
    "frames_per_turn": _Field(_int_text(1), _int_check(1)),
    "client_max_backlog_bytes": _Field(_int_text(1 << 16), _int_check(1 << 16)),
    "client_max_in_flight": _Field(_int_text(1), _int_check(1)),
    "client_connections": _Field(_int_text(1), _int_check(1)),
    "client_connections_per_identity": _Field(_int_text(1), _int_check(1)),
    "status_per_second": _Field(_float_text, _float_check),
    "status_cache_ms": _Field(_int_text(0), _int_check(0)),
    "max_watch_polls_per_client": _Field(_int_text(1), _int_check(1)),
    "metrics_max_connections": _Field(_int_text(1), _int_check(1)),
    "metrics_timeout_ms": _Field(_int_text(1), _int_check(1)),
    "client_stream_bytes": _Field(_int_text(1), _int_check(1)),
    "client_max_streams": _Field(_int_text(1), _int_check(1)),
    "client_streams_total_bytes": _Field(_int_text(1), _int_check(1)),
    "client_stream_stall_ms": _Field(_int_text(1), _int_check(1)),
}
_FIELDS["rdmc"] = {
    "enabled": _Field(_bool_text, _bool_check),
    "threshold_bytes": _Field(_int_text(1), _int_check(1)),
    "block_size": _Field(_int_text(4096), _int_check(4096)),
    "max_object_size": _Field(_int_text(1), _int_check(1)),
    "max_objects_in_flight": _Field(_int_text(1), _int_check(1)),
    "max_bytes_in_flight": _Field(_int_text(1), _int_check(1)),
    "window_blocks": _Field(_int_text(1), _int_check(1)),
    "schedule": _Field(_identity, _schedule),
}
_SECTIONS = (*_FIELDS, "layout")


def _check_fields(section: str, obj: object) -> None:
    """Run every field check on a constructed section, storing normalised values.

    Shared by direct construction and the loader, so a section object that exists is valid
    however it was made.
    """
    for name, spec in _FIELDS[section].items():
        try:
            value = spec.check(getattr(obj, name))
        except _Invalid as bad:
            raise ConfigError(bad.message(f"{section}.{name}")) from None
        object.__setattr__(obj, name, value)


# --------------------------------------------------------------------------- sections
@dataclass(frozen=True, slots=True)
class NodeSection:
    """``[node]``: who this node is, where it listens and whom it asks to join."""

    id: int = 1
    listen: str = "127.0.0.1:7000"
    # Where peers reach this node, if not at ``listen`` (which may be 0.0.0.0): its address in
    # views. In a pod, its stable DNS name.
    advertise: str = ""
    contacts: tuple[str, ...] = ()
    # >0: a node with an empty data_dir founds a group only once this many nodes (itself
    # included) are up, all with empty data dirs and no group running; the lowest id founds,
    # the others join it. For a StatefulSet, whose pods share one command line (see
    # runtime/drivers/bootstrap.py). 0: a node without contacts founds, one with contacts joins.
    bootstrap_expect: int = 0
    app: tuple[str, ...] = ()  # replicated classes this node hosts, "module:Class" (``node --app``)
    metrics: str = ""  # host:port of the Prometheus /metrics and /health endpoint; empty: none
    data_dir: str = "./derecho-data"
    log_level: str = "INFO"
    cluster: str = "derecho"
    # Removed by the group (it stalled, or was cut off from the majority): "rejoin" keeps the
    # process and joins again as a new member through the last view's members, with backoff
    # (never founding a group); "exit" stops with exit code 3 for a supervisor to act on.
    on_partition: str = "rejoin"
    # How frames reach peers: "tcp" always TCP (TLS); "auto" shared memory for peers on this
    # host (same machine and boot, same user; x86-64, TLS on), TCP otherwise; "shm" the same,
    # but a peer that cannot use it is a warning, and it is an error without TLS or on another
    # CPU. TCP stays the control and liveness connection either way.
    transport: str = "auto"

    def __post_init__(self) -> None:
        _check_fields("node", self)
        others = [c for c in self.contacts if c not in (self.listen, self.advertise)]
        if self.bootstrap_expect > 1 and len(others) < self.bootstrap_expect - 1:
            raise ConfigError(
                f"node.bootstrap_expect = {self.bootstrap_expect} needs node.contacts to list the other "
                f"{self.bootstrap_expect - 1} nodes (it lists {len(others)} besides this node); list every node's "
                "address in contacts"
            )


@dataclass(frozen=True, slots=True)
class TimeoutsSection:
    """``[timeouts]`` in milliseconds: integers keep files free of float surprises."""

    heartbeat_ms: int = 50
    suspicion_ms: int = 500
    join_retry_ms: int = 500
    connect_timeout_ms: int = 2000

    def __post_init__(self) -> None:
        _check_fields("timeouts", self)
        if self.suspicion_ms <= self.heartbeat_ms:
            # A peer must be allowed to miss at least one heartbeat, or every node suspects
            # every other one between two heartbeats.
            raise ConfigError(
                f"timeouts.suspicion_ms ({self.suspicion_ms}) must exceed timeouts.heartbeat_ms ({self.heartbeat_ms})"
            )


@dataclass(frozen=True, slots=True)
class MulticastSection:
    """``[multicast]``: flow control and size limits of the small-message multicast."""

    window_size: int = 10_000
    max_batch: int = 1000
    max_message_size: int = 1 << 20
    null_interval_ms: float = 1.0
    max_frame_bytes: int = 64 << 20
    window_bytes: int = 32 << 20  # with window_size: payload bytes a sender may have in flight
    # A sender with nothing of its own waiting sends the null messages it owes at once, with
    # the push it makes anyway (at most once per half null_interval_ms); null_interval_ms is
    # then how long they wait while its own messages wait.
    immediate_nulls: bool = True

    def __post_init__(self) -> None:
        _check_fields("multicast", self)
        if self.max_message_size >= self.max_frame_bytes:
            # A message travels inside a frame with a header, so a message as large as the
            # frame limit could be accepted by send() and then never be sent.
            raise ConfigError(
                f"multicast.max_message_size ({self.max_message_size}) must be below "
                f"multicast.max_frame_bytes ({self.max_frame_bytes})"
            )


@dataclass(frozen=True, slots=True)
class PersistenceSection:
    """``[persistence]``: logs of persistent types, state transfer and total restart."""

    fsync: bool = True
    signing_key: str = ""
    restart_quorum_wait_ms: int = 500
    transfer_chunk_bytes: int = 1 << 20
    transfer_window: int = 8
    stall_timeout_ms: int = 30_000

    def __post_init__(self) -> None:
        _check_fields("persistence", self)


@dataclass(frozen=True, slots=True)
class SecuritySection:
    """``[security]``: mutual TLS, who may be a member, and limits on what anyone who can
    connect may cost this node.

    Secure by default: a node refuses to start without certificates unless ``insecure`` is
    true (then anyone who reaches its port can join the group, read and forge its traffic).
    ``certs_dir`` holds ``ca.crt`` and ``node-<id>.crt``/``.key`` as ``derecho-actors certs``
    makes them; ``ca_file``, ``cert_file`` and ``key_file`` override single paths.
    """

    insecure: bool = False
    certs_dir: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    allowed_members: tuple[int, ...] = ()
    handshake_timeout_ms: int = 5000
    max_unauthenticated: int = 64
    receive_budget_bytes: int = 256 << 20
    client_idle_timeout_ms: int = 300_000
    # Connections from one host still in their handshake, at most; past it the oldest of that
    # host's half-open connections is dropped first (one address cannot fill the global pool).
    max_unauthenticated_per_address: int = 8
    # Revoked certificates, one "node-<id>" / "client-<name>" identity or serial per line,
    # checked at every handshake; "" means <certs_dir>/revoked.txt when that file exists.
    revocation_file: str = ""
    # Serve /metrics and /health over TLS, requiring a client certificate of the cluster's CA.
    metrics_tls: bool = False

    def __post_init__(self) -> None:
        _check_fields("security", self)
        if self.insecure and (self.certs_dir or self.cert_file or self.key_file or self.ca_file):
            raise ConfigError(
                "security.insecure = true contradicts the certificates configured in [security]; "
                "remove one or the other"
            )

    @property
    def tls_configured(self) -> bool:
        return bool(self.certs_dir or (self.ca_file and self.cert_file and self.key_file))

    def tls_paths(self, node_id: int) -> tuple[str, str, str]:
        """(CA, certificate, key) paths for node ``node_id``: explicit files win over the
        conventional names in ``certs_dir``."""
        base = self.certs_dir

        def pick(explicit: str, name: str) -> str:
            return explicit or os.path.join(base, name)

        return (
            pick(self.ca_file, "ca.crt"),
            pick(self.cert_file, f"node-{node_id}.crt"),
            pick(self.key_file, f"node-{node_id}.key"),
        )


@dataclass(frozen=True, slots=True)
class LimitsSection:
    """``[limits]``: what one client (one identity, one connection) may cost a node, so that no
    client can starve peer traffic or grow the node without bound."""

    frames_per_turn: int = 64  # frames of one connection handled before the loop turns
    client_max_backlog_bytes: int = 8 << 20  # replies queued to a client that does not read
    client_max_in_flight: int = 4096  # calls one client connection may have unanswered
    # Client connections open at once, all clients / of one identity (a client certificate, or
    # a host in insecure mode): each holds a descriptor and up to client_max_backlog_bytes of
    # replies, so one identity's count bounds what it can hold of the node. The node's
    # descriptor limit lowers the first if it is too small (a WARNING says so at start).
    client_connections: int = 4096
    client_connections_per_identity: int = 64
    status_per_second: float = 5.0  # status requests per second per identity (burst: 2x)
    status_cache_ms: int = 200  # a status snapshot is shared by requests this close together
    max_watch_polls_per_client: int = 64  # parked watch polls per client identity
    metrics_max_connections: int = 32  # open connections to the metrics endpoint
    metrics_timeout_ms: int = 5000  # a metrics request must arrive whole within this
    # A client's call too large for one frame (above multicast.max_message_size) is streamed to
    # its contact in blocks, with large objects on, up to rdmc.max_object_size; the contact
    # holds the bytes of a streamed call until its last block. Bounded per identity (all its
    # connections together): bytes held and calls streaming at once; node-wide: bytes held for
    # every client. A stream that sends nothing for client_stream_stall_ms is dropped.
    client_stream_bytes: int = 512 << 20
    client_max_streams: int = 4
    client_streams_total_bytes: int = 2 << 30
    client_stream_stall_ms: int = 10_000

    def __post_init__(self) -> None:
        _check_fields("limits", self)
        if self.status_per_second <= 0:
            raise ConfigError(f"limits.status_per_second: expected a number > 0, got {self.status_per_second}")


@dataclass(frozen=True, slots=True)
class RdmcSection:
    """``[rdmc]``: large objects. A multicast payload above ``threshold_bytes`` (an ordered
    call with large arguments) goes as a small descriptor in the total order while its bytes
    move among the shard's members in blocks by an RDMC schedule; it is delivered in its place
    once every member holds all of it."""

    enabled: bool = True
    # Measured (bench multicast_size, 3 members, TLS): 1 MB payloads move at 196 MB/s as objects
    # and 433 MB/s as messages, so by default only what cannot go as a message goes as an object.
    threshold_bytes: int = 1 << 20  # above multicast.max_message_size it acts as that
    # 4 MiB: fewer blocks mean fewer frames, credits, core steps and hash updates per MB, the
    # Python part of a block's cost. Measured (bench/objects.py, 3 nodes, 1 sender, 100 MB x 8,
    # 4 runs interleaved, medians of CPU ms/MB sender / receivers): TCP without TLS 0.49 /
    # 0.64 0.61 against 0.52 / 0.75 0.73 at 1 MiB; shared memory 0.40 / 0.56 0.56 against
    # 0.46 / 0.63 0.65; TLS about even; 10 MB objects from all three senders 16% less (no
    # TLS) and 11% less (TLS) CPU in all. Memory: window_blocks blocks in flight per link.
    block_size: int = 4 << 20
    # No whole-object pass runs on the node's loop (the sender's digest is taken on a worker
    # thread, a receive buffer is mapped page by page as blocks land and is delivered as it
    # is), so the size is bounded by memory alone. Memory: an object costs one copy of itself
    # per node, the receive buffer (which the application is handed) or the sender's own
    # bytes. A node starts an object of its own only while its objects in flight, in any
    # role, stay within max_bytes_in_flight together; objects it receives are bounded by
    # max_objects_in_flight (each sender of a shard keeps its share undelivered) times
    # max_object_size, not held to the bytes, since a receiver waiting for byte room could wait
    # on a sender that waits for it (measured: a 1 GiB object raises a receiver's peak RSS by
    # about 1.0x its size; bench/objects.py). Lower the limits on small machines.
    max_object_size: int = 4 << 30  # larger payloads are refused at the caller (ObjectTooLarge)
    max_objects_in_flight: int = 8  # objects at one node in any role; a sender gets its share
    max_bytes_in_flight: int = 4 << 30  # their sizes together
    window_blocks: int = 4  # blocks of one object in flight per link
    schedule: str = "binomial"

    def __post_init__(self) -> None:
        _check_fields("rdmc", self)
        if self.max_bytes_in_flight < self.max_object_size:
            raise ConfigError(
                f"rdmc.max_bytes_in_flight ({self.max_bytes_in_flight}) must be at least rdmc.max_object_size "
                f"({self.max_object_size}), or an object of the largest size could never start"
            )

    def policy(self, max_message_size: int) -> ObjectPolicy | None:
        """The core's large-object policy, None when large objects are off. A payload above
        ``max_message_size`` cannot go as a message, so the threshold is at most that."""
        if not self.enabled:
            return None
        return ObjectPolicy(
            threshold=min(self.threshold_bytes, max_message_size),
            block_size=self.block_size,
            kind=ScheduleKind(self.schedule),
            max_object_size=self.max_object_size,
            max_objects=self.max_objects_in_flight,
            max_bytes=self.max_bytes_in_flight,
            window=self.window_blocks,
        )


def _default_layout() -> LayoutPolicy:
    """One type with one shard holding every node: what a first experiment wants."""
    return LayoutPolicy.of({DEFAULT_LAYOUT_TYPE: ShardPolicy()})


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything one node needs to start, validated; build it with :func:`load_config`."""

    node: NodeSection = field(default_factory=NodeSection)
    timeouts: TimeoutsSection = field(default_factory=TimeoutsSection)
    multicast: MulticastSection = field(default_factory=MulticastSection)
    layout: LayoutPolicy = field(default_factory=_default_layout)
    persistence: PersistenceSection = field(default_factory=PersistenceSection)
    security: SecuritySection = field(default_factory=SecuritySection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    rdmc: RdmcSection = field(default_factory=RdmcSection)

    def __post_init__(self) -> None:
        # The sections validate themselves; this only catches a wrong object in a slot, which
        # would otherwise fail far away (in the driver) with an AttributeError.
        expected = (
            ("node", NodeSection),
            ("timeouts", TimeoutsSection),
            ("multicast", MulticastSection),
            ("layout", LayoutPolicy),
            ("persistence", PersistenceSection),
            ("security", SecuritySection),
            ("limits", LimitsSection),
            ("rdmc", RdmcSection),
        )
        for name, cls in expected:
            value = getattr(self, name)
            if not isinstance(value, cls):
                raise ConfigError(f"{name}: expected a {cls.__name__}, got {type(value).__name__}")
        if self.node.transport == "shm" and self.security.insecure:
            raise ConfigError(
                'node.transport = "shm" needs TLS: shared memory is set up only over a connection whose '
                'certificate proved the peer\'s node id (use "auto" or "tcp" with security.insecure)'
            )
        if self.node.transport == "rdma" and self.security.insecure:
            raise ConfigError(
                'node.transport = "rdma" needs TLS: queue pairs and rkeys are exchanged only over a connection '
                'whose certificate proved the peer\'s node id (use "tcp" with security.insecure)'
            )
        r, m = self.rdmc, self.multicast
        if r.enabled and r.block_size + 64 > m.max_frame_bytes:
            raise ConfigError(
                f"rdmc.block_size ({r.block_size}) plus a block frame's header must fit "
                f"multicast.max_frame_bytes ({m.max_frame_bytes})"
            )

    def client_call_limit(self) -> int:
        """The largest call a client may send (its arguments, encoded), told to it on connect:
        with large objects on, ``rdmc.max_object_size`` (a call too large for one frame is
        streamed to the contact in blocks); else ``multicast.max_message_size``."""
        m, r = self.multicast, self.rdmc
        if not r.enabled:
            return m.max_message_size
        return max(m.max_message_size, r.max_object_size)

    def client_frame_limit(self) -> int:
        """The largest frame a client may send: one call of ``multicast.max_message_size``
        with room for its envelope. Larger calls come in blocks (of at most this), so a
        contact never holds a client's frame larger than this whole."""
        return self.multicast.max_message_size + (64 << 10)

    def core_config(self) -> CoreConfig:
        """The protocol core's tuning; the core counts time in seconds, the file in ms."""
        t, m = self.timeouts, self.multicast
        return CoreConfig(
            multicast=MulticastConfig(
                window_size=m.window_size,
                window_bytes=m.window_bytes,
                null_interval=m.null_interval_ms / 1000.0,
                immediate_nulls=m.immediate_nulls,
                max_batch=m.max_batch,
                max_message_size=m.max_message_size,
                objects=self.rdmc.policy(m.max_message_size),
            ),
            membership=MembershipConfig(
                heartbeat_interval=t.heartbeat_ms / 1000.0,
                suspicion_timeout=t.suspicion_ms / 1000.0,
                join_retry=t.join_retry_ms / 1000.0,
            ),
        )

    def listen_host_port(self) -> tuple[str, int]:
        """``node.listen`` split for ``bind``; brackets of an IPv6 host are removed."""
        parts = _split_host_port(self.node.listen)
        assert parts is not None  # checked on construction
        return parts

    @property
    def address(self) -> str:
        """This node's address in views: ``node.advertise``, else ``node.listen``."""
        return self.node.advertise or self.node.listen

    def contact_addresses(self) -> list[str]:
        """The contacts in the order to try them; empty means this node founds a group."""
        return list(self.node.contacts)


# --------------------------------------------------------------------------- layers
@dataclass(frozen=True, slots=True)
class _Setting:
    """One value from one layer: ``text`` values still need parsing to the field's type."""

    value: object
    source: str
    text: bool


@dataclass(slots=True)
class _Layer:
    """Settings gathered so far: flat keys (``node.id``) and layout keys per type, in order."""

    flat: dict[str, _Setting] = field(default_factory=dict)
    layout: dict[str, dict[str, _Setting]] = field(default_factory=dict)

    def set_layout(self, type_name: str, key: str, setting: _Setting) -> None:
        self.layout.setdefault(type_name, {})[key] = setting


def _unknown_key(key: str, known: Sequence[str], source: str) -> ConfigError:
    """Unknown-key error with the known keys and, for a near miss, the likely intended one."""
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f'; did you mean "{key.rsplit(".", 1)[0]}.{close[0]}"?' if close else ""
    return ConfigError(_one_line(f"unknown key {_show(key)} (known: {', '.join(known)}){hint} ({source})"))


def _unknown_section(section: str, source: str) -> ConfigError:
    """Unknown-section error listing the sections that exist."""
    close = difflib.get_close_matches(section, _SECTIONS, n=1)
    hint = f"; did you mean [{close[0]}]?" if close else ""
    known = ", ".join(f"[{name}]" for name in _FIELDS) + ", [layout.<Type>]"
    return ConfigError(_one_line(f"unknown section [{section}] (known: {known}){hint} ({source})"))


def _read_file(path: str) -> dict[str, Any]:
    """Read and parse the TOML file; every failure names the file (and line when known)."""
    shown = _show(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {shown} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {shown} is a directory, not a file") from None
    except OSError as err:
        reason = err.strerror or str(err)
        raise ConfigError(_one_line(f"cannot read config file {shown}: {reason}")) from None
    try:
        text = data.decode("utf-8-sig")  # tolerate the BOM some editors write
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(f"config file {shown}, line {line}: not valid UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(_toml_error(shown, text, str(err))) from None


_TOML_POSITION = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$", re.DOTALL)


def _toml_error(shown: str, text: str, message: str) -> str:
    """Reword tomllib's message so the file and line come first, as in a compiler error."""
    match = _TOML_POSITION.match(message)
    if match:
        base, line, column = match.group(1), match.group(2), match.group(3)
        return _one_line(f"config file {shown}, line {line}, column {column}: invalid TOML: {base}")
    base = message.removesuffix(" (at end of document)")
    line = text.count("\n") + (0 if text.endswith("\n") else 1)
    where = f"line {max(line, 1)} (end of file)"
    return _one_line(f"config file {shown}, {where}: invalid TOML: {base}")


def _file_layer(doc: Mapping[str, Any], path: str, layer: _Layer) -> None:
    """Add the parsed file's settings to ``layer``, rejecting anything the loader won't use."""
    source = f"in {path}"
    for section, table in doc.items():
        if section not in _SECTIONS:
            if isinstance(table, dict):
                raise _unknown_section(section, source)
            raise ConfigError(
                _one_line(
                    f"unknown top-level key {_show(section)}; settings belong in a section such as [node] ({source})"
                )
            )
        if not isinstance(table, dict):
            raise ConfigError(_one_line(f"{section}: expected a table [{section}], got {_show(table)} ({source})"))
        if section == "layout":
            for type_name, policy in table.items():
                if not isinstance(policy, dict):
                    raise ConfigError(
                        _one_line(
                            f"layout.{type_name}: expected a table [layout.{type_name}] with "
                            f"{', '.join(_LAYOUT_KEYS)}, got {_show(policy)} ({source})"
                        )
                    )
                layer.layout.setdefault(type_name, {})  # an empty table still declares the type
                for key, value in policy.items():
                    if key not in _LAYOUT_KEYS:
                        raise _unknown_key(f"layout.{type_name}.{key}", _LAYOUT_KEYS, source)
                    layer.set_layout(type_name, key, _Setting(value, source, text=False))
            continue
        known = tuple(_FIELDS[section])
        for key, value in table.items():
            if key not in known:
                raise _unknown_key(f"{section}.{key}", known, source)
            layer.flat[f"{section}.{key}"] = _Setting(value, source, text=False)


def _env_layer(environ: Mapping[str, str], layer: _Layer) -> None:
    """Add ``DERECHO_<SECTION>_<KEY>`` variables; near-miss names in our sections are errors."""
    known_vars: dict[str, str] = {}
    for section, specs in _FIELDS.items():
        for key in specs:
            known_vars[f"{ENV_PREFIX}{section}_{key}".upper()] = f"{section}.{key}"
    for var in sorted(environ):
        if var in known_vars:
            layer.flat[known_vars[var]] = _Setting(environ[var], f"from {var}", text=True)
            continue
        for section in _FIELDS:
            prefix = f"{ENV_PREFIX}{section}_".upper()
            if var.upper().startswith(prefix):
                siblings = [name for name in known_vars if name.startswith(prefix)]
                close = difflib.get_close_matches(var.upper(), siblings, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigError(_one_line(f"unknown environment variable {var} (known: {', '.join(siblings)}){hint}"))


def parse_override(text: str) -> tuple[str, str]:
    """Split one ``--set`` argument, ``section.key=value``, into (key, value).

    The value is kept as written (it may be empty, e.g. ``node.contacts=``); the key is
    checked against the known settings later by :func:`load_config`.
    """
    if not isinstance(text, str):
        raise ConfigError(f"--set expects section.key=value, got {_show(text)}")
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(_one_line(f"--set expects section.key=value (e.g. node.id=3), got {_show(text)}"))
    parts = key.split(".")
    if len(parts) < 2 or not all(parts) or any(ch.isspace() for ch in key):
        raise ConfigError(
            _one_line(
                f"--set key {_show(key)} is not of the form section.key (e.g. node.id, "
                f"timeouts.heartbeat_ms, layout.KV.shards)"
            )
        )
    return key, value


def _cli_layer(overrides: Mapping[str, str], layer: _Layer) -> None:
    """Add ``--set`` overrides (dotted key -> text), which win over everything else."""
    for key, value in overrides.items():
        source = f"from --set {key}"
        if not isinstance(value, str):
            raise ConfigError(_one_line(f"{key}: override values are strings, got {_show(value)} ({source})"))
        section, _, rest = key.partition(".")
        if section not in _SECTIONS:
            raise _unknown_section(section, source)
        if section == "layout":
            type_name, _, leaf = rest.rpartition(".")
            if not type_name:
                raise ConfigError(
                    _one_line(f"{key}: layout settings are layout.<Type>.<key>, e.g. layout.KV.shards ({source})")
                )
            if leaf not in _LAYOUT_KEYS:
                raise _unknown_key(key, _LAYOUT_KEYS, source)
            layer.set_layout(type_name, leaf, _Setting(value, source, text=True))
            continue
        known = tuple(_FIELDS[section])
        if rest not in known:
            raise _unknown_key(key, known, source)
        layer.flat[key] = _Setting(value, source, text=True)


# --------------------------------------------------------------------------- building
def _resolve(key: str, spec: _Field, setting: _Setting) -> object:
    """One flat setting as a checked native value, errors naming the key and the source."""
    try:
        value = spec.parse_text(str(setting.value)) if setting.text else setting.value
        return spec.check(value)
    except _Invalid as bad:
        raise ConfigError(bad.message(key, setting.source)) from None


def _build_section(section: str, cls: type[Any], layer: _Layer) -> Any:
    """Construct one flat section from the merged settings (defaults for what is unset)."""
    values: dict[str, object] = {}
    for key, spec in _FIELDS[section].items():
        setting = layer.flat.get(f"{section}.{key}")
        if setting is not None:
            values[key] = _resolve(f"{section}.{key}", spec, setting)
    return cls(**values)


def _layout_text(key: str, text: str) -> object:
    """Parse a layout value given as text (env or CLI) to what the file would hold."""
    if key == "overlapping":
        return _bool_text(text)
    if key == "max_nodes":
        if text.strip().lower() in ("", "none"):
            return None
        return _int_text(1)(text)
    if key == "reserved":
        if text.strip().lower() in ("", "none"):
            return None
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            raise _Invalid(
                f"expected a TOML array with one list of node ids per shard, e.g. [[1, 2], [3]], got {_show(text)}"
            ) from None
    return _int_text(1)(text)


def _layout_error_field(text: str) -> str:
    """The policy field a LayoutError is about: the first field name its text mentions."""
    best: tuple[int, str] | None = None
    for name in _LAYOUT_KEYS:
        match = re.search(rf"\b{name}\b", text)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), name)
    return best[1] if best else ""


def _build_policy(type_name: str, settings: Mapping[str, _Setting]) -> ShardPolicy:
    """One ``[layout.<Type>]`` table as a ShardPolicy, validated by the policy itself.

    ShardPolicy.validate already words every range and consistency problem well, so its text
    is reused, prefixed with the field it concerns and suffixed with where the value came from.
    """
    prefix = f"layout.{type_name}"
    values: dict[str, object] = {}
    for key, setting in settings.items():
        try:
            value = _layout_text(key, str(setting.value)) if setting.text else setting.value
            if key == "reserved" and value is not None:
                ok = isinstance(value, (list, tuple)) and all(isinstance(inner, (list, tuple)) for inner in value)
                if not ok:
                    raise _Invalid(
                        f"expected a list with one list of node ids per shard, e.g. [[1, 2], [3]], got {_show(value)}"
                    )
        except _Invalid as bad:
            raise ConfigError(bad.message(f"{prefix}.{key}", setting.source)) from None
        values[key] = value
    policy = ShardPolicy(**values)  # type: ignore[arg-type]  # types are checked by validate
    try:
        policy.validate(type_name)
    except LayoutError as err:
        text = str(err).removeprefix(f"layout of type {type_name!r}: ")
        name = _layout_error_field(text)
        found = settings.get(name)
        source = f" ({found.source})" if found else ""
        key = f"{prefix}.{name}" if name else prefix
        raise ConfigError(_one_line(f"{key}: {text}{source}")) from None
    return policy


def _build_layout(layer: _Layer) -> LayoutPolicy:
    """All layout tables in order, or the one-shard default when none is given. Keys a table
    leaves out hold ShardPolicy's defaults here, and the policy records which keys were set."""
    if not layer.layout:
        return _default_layout()
    pairs: list[tuple[str, ShardPolicy]] = []
    for type_name, settings in layer.layout.items():
        if not type_name.strip() or not type_name.isprintable():
            raise ConfigError(
                f"layout.{_show(type_name)}: a type name must be a non-empty printable name, e.g. [layout.KV]"
            )
        pairs.append((type_name, _build_policy(type_name, settings)))
        try:
            # Each type alone is valid; growing the policy one type at a time pins a clash
            # between types (one node reserved by two disjoint types) on the later type.
            LayoutPolicy(tuple(pairs))
        except LayoutError as err:
            text = str(err).removeprefix("layout policy: ")
            setting = settings.get("reserved")
            source = f" ({setting.source})" if setting else ""
            raise ConfigError(_one_line(f"layout.{type_name}.reserved: {text}{source}")) from None
    # Remember which keys each table wrote: a host merges only those over the policy its code
    # gives (``runtime.core.layout.merge_over``); the rest keep the code's values.
    explicit = tuple((name, frozenset(settings)) for name, settings in layer.layout.items())
    return LayoutPolicy(tuple(pairs), explicit)


def load_config(
    path: str | None,
    overrides: Mapping[str, str] = {},  # noqa: B006 - read only, never mutated
    environ: Mapping[str, str] | None = None,
) -> NodeConfig:
    """Load the node configuration: file, then environment, then overrides, then validate.

    ``path`` None means no file (defaults, environment and overrides only). ``environ`` None
    means ``os.environ``; tests pass a dict so the process environment cannot leak in.
    ``overrides`` maps dotted keys to text, as :func:`parse_override` returns them from
    ``--set`` flags. Raises ConfigError with a one-line message naming the offending field.
    """
    layer = _Layer()
    if path is not None:
        shown = os.fspath(path)
        _file_layer(_read_file(shown), shown, layer)
    _env_layer(os.environ if environ is None else environ, layer)
    _cli_layer(overrides, layer)
    return NodeConfig(
        node=_build_section("node", NodeSection, layer),
        timeouts=_build_section("timeouts", TimeoutsSection, layer),
        multicast=_build_section("multicast", MulticastSection, layer),
        layout=_build_layout(layer),
        persistence=_build_section("persistence", PersistenceSection, layer),
        security=_build_section("security", SecuritySection, layer),
        limits=_build_section("limits", LimitsSection, layer),
        rdmc=_build_section("rdmc", RdmcSection, layer),
    )


# --------------------------------------------------------------------------- example
def _toml_str(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def example_config(node_id: int, port: int, contacts: list[str]) -> str:
    """A complete, commented configuration file for node ``node_id`` on ``127.0.0.1:port``.

    Every other value is the default, written out so the file documents what can be set.
    The arguments are checked like loaded values, so the text always loads back.
    """
    section = NodeSection(id=node_id, listen=f"127.0.0.1:{port}", contacts=tuple(contacts))
    timeouts, multicast, persistence = TimeoutsSection(), MulticastSection(), PersistenceSection()
    security, limits, rdmc = SecuritySection(), LimitsSection(), RdmcSection()
    contact_list = "[" + ", ".join(_toml_str(c) for c in section.contacts) + "]"
    return f"""\
# derecho-actors node configuration (TOML). Every setting is optional; missing ones take the
# defaults shown here. Environment variables DERECHO_<SECTION>_<KEY> override this file
# (e.g. DERECHO_NODE_ID=3, DERECHO_NODE_CONTACTS=host1:7000,host2:7000), and
# `--set section.key=value` flags override both.

[node]
id = {section.id}  # this node's id, unique within the group (integer >= 0)
listen = {_toml_str(section.listen)}  # host:port to bind; port 0 lets the OS pick one
advertise = ""  # host:port peers reach this node at, if not listen (e.g. its DNS name); "" for listen
# members to join through ("host:port"), tried in order; [] founds a new group
contacts = {contact_list}
# > 0: with an empty data_dir, found only once this many nodes (listed in contacts, all with
# empty data dirs) are up and no group runs; the lowest id founds. 0: contacts or found.
bootstrap_expect = 0
# replicated classes to host, "module:Class" (imported from the working directory or the
# installed packages); [] hosts none (a raw multicast node)
app = []
metrics = ""  # host:port for Prometheus /metrics and /health/live, /health/ready; "" for none
data_dir = {_toml_str(section.data_dir)}  # where this node keeps its state; created on start
log_level = {_toml_str(section.log_level)}  # DEBUG, INFO, WARNING or ERROR
cluster = {_toml_str(section.cluster)}  # group name; a node of another cluster is refused
# removed by the group (a stall, a partition): "rejoin" as a new member (state transfer) through
# the last view's members, retrying with backoff; "exit" with code 3
on_partition = {_toml_str(section.on_partition)}
# "auto": shared memory for peers on this host (same user, TLS on), TCP to others; "tcp": TCP
# only; "shm": as auto, warning about peers that cannot use it; "rdma": every peer through an RDMA
# device (pyverbs), refused at start (exit 7) where there is none; "auto" never picks it
transport = {_toml_str(section.transport)}

[timeouts]
heartbeat_ms = {timeouts.heartbeat_ms}  # how often a node tells the group it is alive
suspicion_ms = {timeouts.suspicion_ms}  # silence after which a peer is suspected; > heartbeat_ms
join_retry_ms = {timeouts.join_retry_ms}  # wait before retrying a join (next contact in turn)
connect_timeout_ms = {timeouts.connect_timeout_ms}  # then give up on an unreachable contact

[multicast]
window_size = {multicast.window_size}  # messages a sender may have in flight per shard
window_bytes = {multicast.window_bytes}  # payload bytes a sender may have in flight per shard
max_batch = {multicast.max_batch}  # most messages delivered in one batch
max_message_size = {multicast.max_message_size}  # largest payload in bytes
null_interval_ms = {multicast.null_interval_ms}  # a sender whose own messages wait sends owed nulls after this
immediate_nulls = {str(multicast.immediate_nulls).lower()}  # one with nothing waiting: at once (at most every half interval)
max_frame_bytes = {multicast.max_frame_bytes}  # largest wire frame accepted from a peer

[rdmc]
# Large objects: a payload above threshold_bytes (an ordered call with large arguments) goes as
# a descriptor in the total order, its bytes in blocks among the shard's members (RDMC).
enabled = {str(rdmc.enabled).lower()}
threshold_bytes = {rdmc.threshold_bytes}  # payloads above this go as objects (at most multicast.max_message_size)
block_size = {rdmc.block_size}  # bytes per block
max_object_size = {rdmc.max_object_size}  # larger payloads are refused at the caller (ObjectTooLarge)
max_objects_in_flight = {rdmc.max_objects_in_flight}  # per node; each sender of a shard keeps its share undelivered
max_bytes_in_flight = {rdmc.max_bytes_in_flight}  # per node: it starts its own objects only within this, with all it holds
window_blocks = {rdmc.window_blocks}  # blocks of one object in flight per link
schedule = {_toml_str(rdmc.schedule)}  # binomial (RDMC's pipeline), chain or sequential

[persistence]
fsync = {str(persistence.fsync).lower()}  # fsync each batch of log records (persistent types)
signing_key = ""  # ed25519 key file (derecho-actors keygen) for types with signed=True
restart_quorum_wait_ms = {persistence.restart_quorum_wait_ms}  # total restart: wait for more logs after quorum
transfer_chunk_bytes = {persistence.transfer_chunk_bytes}  # state transfer chunk size
transfer_window = {persistence.transfer_window}  # chunks in flight per transfer
stall_timeout_ms = {persistence.stall_timeout_ms}  # a log write or fsync hanging this long is a storage failure

[security]
# Mutual TLS on every connection. Without certificates a node refuses to start unless
# insecure = true (then anyone who can reach the port can join and forge traffic).
insecure = false
certs_dir = ""  # ca.crt, node-<id>.crt and node-<id>.key, as `derecho-actors certs` makes them
ca_file = ""  # explicit paths override the names in certs_dir
cert_file = ""
key_file = ""
allowed_members = []  # node ids allowed to be members; [] allows any id with a node certificate
handshake_timeout_ms = {security.handshake_timeout_ms}  # TLS handshake and hello must end within this
max_unauthenticated = {security.max_unauthenticated}  # connections still in their handshake, at most
receive_budget_bytes = {security.receive_budget_bytes}  # partly received frames, all connections together
client_idle_timeout_ms = {security.client_idle_timeout_ms}  # a client connection silent this long is closed
max_unauthenticated_per_address = {security.max_unauthenticated_per_address}  # half-open connections per host
revocation_file = ""  # revoked identities/serials (certs revoke); "" uses certs_dir/revoked.txt if present
metrics_tls = false  # true: the metrics endpoint speaks TLS and requires a certificate of the CA

[limits]
frames_per_turn = {limits.frames_per_turn}  # frames of one connection handled before the loop turns
client_max_backlog_bytes = {limits.client_max_backlog_bytes}  # replies queued to a client that does not read
client_max_in_flight = {limits.client_max_in_flight}  # unanswered calls per client connection
client_connections = {limits.client_connections}  # client connections open at once, all clients
client_connections_per_identity = {limits.client_connections_per_identity}  # of one client identity
status_per_second = {limits.status_per_second}  # status requests per second per identity
status_cache_ms = {limits.status_cache_ms}  # requests this close together share one status snapshot
max_watch_polls_per_client = {limits.max_watch_polls_per_client}  # parked watch polls per client identity
metrics_max_connections = {limits.metrics_max_connections}  # open connections to the metrics endpoint
metrics_timeout_ms = {limits.metrics_timeout_ms}  # a metrics request must arrive whole within this
client_stream_bytes = {limits.client_stream_bytes}  # bytes of a client identity's calls partly streamed in, held here
client_max_streams = {limits.client_max_streams}  # calls one client identity may stream in at once
client_streams_total_bytes = {limits.client_streams_total_bytes}  # bytes of partly streamed calls, every client
client_stream_stall_ms = {limits.client_stream_stall_ms}  # a streamed call silent this long is dropped

# Layout: one [layout.<TypeName>] table per replicated type, in allocation order. With none,
# one type "{DEFAULT_LAYOUT_TYPE}" has one shard holding every node. A table's keys override the
# policy the application's code gives; keys left out keep the code's values. For example:
#
# [layout.KV]
# subgroups = 1            # independent copies of the type
# shards = 2               # shards per subgroup
# min_nodes = 1            # a view with fewer nodes per shard is inadequate and waits
# max_nodes = 3            # optional upper bound per shard
# reserved = [[1, 2], [3]] # optional: node ids that always go to each shard
# overlapping = false      # true: this type's shards may share nodes with other types
"""
