"""Every error's group, its built-in bases, what ``applied`` says by default, and that the errors
the group answers with still come back as themselves across the wire.

One row per error class, so a failure names the class; a test checks the table covers every
exported error, so a new error cannot be added without deciding its group.
"""

from __future__ import annotations

import builtins

import msgpack
import pytest

import derecho_actors as da
from derecho_actors import exceptions
from derecho_actors.wire import codec as _codec
from runtime import errors
from runtime.errors import (
    DerechoError,
    PersistenceError,
    ProtocolError,
    RemoteError,
    Unavailable,
    UsageError,
)

pytestmark = pytest.mark.timeout(30)

GROUPS: tuple[type[DerechoError], ...] = (Unavailable, UsageError, PersistenceError, ProtocolError)

# (class name, its groups, the built-in exceptions it also is)
TABLE: list[tuple[str, tuple[type[DerechoError], ...], tuple[type[BaseException], ...]]] = [
    # retry may help
    ("CallTimeout", (Unavailable,), (builtins.TimeoutError, OSError)),
    ("ReplicaLost", (Unavailable,), ()),
    ("ShardUnavailable", (Unavailable,), ()),
    ("ShardAwaitingLog", (Unavailable,), ()),
    ("GroupClosed", (Unavailable,), (RuntimeError,)),
    ("SessionLimit", (Unavailable,), ()),
    ("ClientLimit", (Unavailable,), ()),
    ("StateTransferError", (Unavailable,), ()),
    ("NotPersistedYet", (Unavailable, PersistenceError), ()),
    # the caller's code or configuration is wrong
    ("ConfigError", (UsageError,), (ValueError,)),
    ("LayoutError", (UsageError,), (ValueError,)),
    ("NotRegistered", (UsageError,), ()),
    ("UnknownMethod", (UsageError,), (AttributeError,)),
    ("SerializationError", (UsageError,), (TypeError,)),
    ("PayloadTooLarge", (UsageError,), (ValueError,)),
    ("NestedCallError", (UsageError,), (RuntimeError,)),
    ("NotPersistent", (UsageError,), ()),
    ("DivergenceError", (UsageError,), ()),
    ("P2PMutationError", (UsageError,), ()),
    ("ReadOptionError", (UsageError,), (ValueError,)),
    ("EmitError", (UsageError,), (RuntimeError,)),
    ("ResultTooLarge", (UsageError,), ()),
    # state or versions not there as asked
    ("LogError", (PersistenceError,), ()),
    ("LogCorrupted", (PersistenceError,), ()),
    ("LogSignatureError", (PersistenceError,), ()),
    ("VersionLost", (PersistenceError,), ()),
    ("RestartError", (PersistenceError,), ()),
    ("ShardStateLost", (PersistenceError,), ()),
    # the two ends of a connection do not agree
    ("WireError", (ProtocolError,), ()),
    ("Refused", (ProtocolError,), ()),
    # in no group: each has its own handling
    ("RemoteError", (), ()),
    ("SessionExpired", (), ()),
    ("ReplyForgotten", (), ()),
    ("WatchHistoryLost", (), ()),
]

BUILTINS: tuple[type[BaseException], ...] = (
    builtins.TimeoutError,
    OSError,
    RuntimeError,
    ValueError,
    TypeError,
    AttributeError,
)

# What ``applied`` says on an Unavailable built from a message alone: False, not run.
APPLIED: list[tuple[str, bool | None]] = [
    ("CallTimeout", None),
    ("ReplicaLost", None),
    ("ShardUnavailable", False),
    ("ShardAwaitingLog", False),
    ("GroupClosed", None),
    ("SessionLimit", False),
    ("ClientLimit", False),
    ("StateTransferError", None),
    ("NotPersistedYet", False),
]


def _cls(name: str) -> type[DerechoError]:
    cls = getattr(exceptions, name)
    assert isinstance(cls, type) and issubclass(cls, DerechoError), name
    return cls


def _make(cls: type[DerechoError], message: str = "what happened") -> DerechoError:
    if cls is RemoteError:
        return RemoteError("KeyError", message, "")
    return cls(message)


@pytest.mark.parametrize(("name", "groups", "bases"), TABLE, ids=[row[0] for row in TABLE])
def test_group_and_builtin_bases(
    name: str, groups: tuple[type[DerechoError], ...], bases: tuple[type[BaseException], ...]
) -> None:
    cls = _cls(name)
    assert cls.__name__ == name
    assert {g for g in GROUPS if issubclass(cls, g)} == set(groups), f"{name} is in the wrong group"
    assert {b for b in BUILTINS if issubclass(cls, b)} == set(bases), f"{name} lost or gained a built-in base"
    exc = _make(cls)
    assert isinstance(exc, DerechoError)
    for b in bases:  # ``except ValueError`` and the like keep catching it
        with pytest.raises(b):
            raise exc


def test_table_covers_every_exported_error() -> None:
    exported = {getattr(exceptions, n) for n in exceptions.__all__}
    classes = {c for c in exported if isinstance(c, type) and issubclass(c, DerechoError)}
    assert classes == {_cls(n) for n, _, _ in TABLE} | set(GROUPS) | {DerechoError}
    assert len({n for n, _, _ in TABLE}) == len(TABLE)


@pytest.mark.parametrize("group", GROUPS, ids=[g.__name__ for g in GROUPS])
def test_groups_are_derecho_errors_with_guidance(group: type[DerechoError]) -> None:
    assert group.__bases__ == (DerechoError,)
    assert group.__doc__ and len(group.__doc__) > 100, "a group's docstring says what to do when catching it"
    assert group.__name__ in errors.__all__ and group.__name__ in exceptions.__all__


@pytest.mark.parametrize(("name", "applied"), APPLIED, ids=[row[0] for row in APPLIED])
def test_applied_default(name: str, applied: bool | None) -> None:
    exc = _make(_cls(name))
    assert isinstance(exc, Unavailable)
    assert exc.applied is applied


def test_replica_lost_keeps_its_own_applied() -> None:
    assert errors.ReplicaLost("gone", applied=False).applied is False
    assert errors.ReplicaLost("gone").applied is None


def test_timeout_error_is_an_alias_of_call_timeout() -> None:
    assert errors.TimeoutError is errors.CallTimeout
    assert da.TimeoutError is errors.CallTimeout
    # The old name stays reachable but out of __all__: a star import must not shadow the builtin.
    assert "TimeoutError" not in errors.__all__ and "TimeoutError" not in da.__all__
    assert "CallTimeout" in errors.__all__
    assert builtins.TimeoutError is not errors.CallTimeout  # the built-in is not shadowed by a new class
    exc = errors.CallTimeout("late", pending=(2, 3))
    assert exc.pending == (2, 3) and str(exc) == "late"
    with pytest.raises(builtins.TimeoutError):
        raise exc
    with pytest.raises(da.TimeoutError):
        raise exc


def test_package_exports_every_error() -> None:
    for name in exceptions.__all__:  # CallTimeout and TimeoutError among them: one class
        assert name in da.__all__, f"derecho_actors.__all__ lacks {name}"
        assert getattr(da, name) is getattr(exceptions, name)


OWN = sorted(n for n, cls in _codec._OWN_ERRORS.items() if cls.__name__ == n)


def test_the_old_timeout_name_from_a_peer_of_the_release_before_is_a_call_timeout() -> None:
    wire = msgpack.packb(["TimeoutError", "no reply in 5 s", ""], use_bin_type=True)
    got = _codec.decode_error(wire, node=2)
    assert type(got) is da.CallTimeout and "no reply in 5 s" in str(got)


@pytest.mark.parametrize("name", OWN)
def test_own_errors_come_back_as_themselves(name: str) -> None:
    cls = _codec._OWN_ERRORS[name]
    assert cls.__name__ == name
    sent = cls("refused for a reason")
    wire = _codec.encode_refusal(sent)
    assert msgpack.unpackb(wire, raw=False)[0] == name  # the name written is the class's own
    got = _codec.decode_error(wire, node=2)
    assert type(got) is cls
    assert str(got) == "refused for a reason"
    if isinstance(got, Unavailable):
        assert issubclass(cls, Unavailable)
        expected = False if cls is errors.ReplicaLost else cls.applied  # a refused ReplicaLost ran nothing
        assert got.applied is expected


def test_call_timeout_travels_under_its_new_name() -> None:
    assert "CallTimeout" in _codec._OWN_ERRORS
    assert _codec._OWN_ERRORS["TimeoutError"] is errors.CallTimeout  # the old name, from peers of the release before
    wire = _codec.encode_refusal(errors.TimeoutError("a stable read waited in vain"))
    assert msgpack.unpackb(wire, raw=False)[0] == "CallTimeout"
    got = _codec.decode_error(wire, node=1)
    assert type(got) is errors.CallTimeout
    assert isinstance(got, builtins.TimeoutError) and isinstance(got, Unavailable)


@pytest.mark.parametrize("name", sorted(_codec._READ_ERRORS))
def test_read_errors_raised_in_a_method_come_back_as_themselves(name: str) -> None:
    cls = _codec._READ_ERRORS[name]
    try:
        raise cls("not on disk everywhere yet")
    except DerechoError as exc:
        wire = _codec.encode_error(exc)
    got = _codec.decode_error(wire, node=3)
    assert type(got) is cls
    assert "Traceback" in got.remote_traceback  # type: ignore[attr-defined]


def test_other_errors_of_a_method_stay_remote_errors() -> None:
    try:
        raise KeyError("k")
    except KeyError as exc:
        wire = _codec.encode_error(exc)
    got = _codec.decode_error(wire, node=3)
    assert type(got) is RemoteError and got.remote_type == "KeyError" and got.node == 3
    assert not isinstance(got, (Unavailable, UsageError, PersistenceError, ProtocolError))


def test_a_call_applied_whose_reply_is_gone_is_refused_as_reply_forgotten() -> None:
    """The replicas' answer to a retried call they applied already and no longer keep the reply
    of: a typed refusal (no traceback: the method did not raise), not a ``RemoteError``, and
    one that says not to retry (``applied`` True, in no group that retrying may help)."""
    from derecho_actors.model.decorators import spec_of
    from derecho_actors.replica.calls import session_refusal
    from derecho_actors.replica.sessions import Kind
    from examples.kv_store import KV

    spec = spec_of(KV)
    assert spec is not None
    got = _codec.decode_error(session_refusal(Kind.FORGOTTEN, spec, 9), node=2)
    assert type(got) is da.ReplyForgotten
    assert not isinstance(got, (RemoteError, Unavailable, UsageError))
    assert got.applied is True
    assert "call 9" in str(got) and "read the state" in str(got) and "raised by" not in str(got)
