"""A member's loop flushes the core's output only after frames the core took: frames that never
reach it (members' answers to this node's clients, app messages, refused frames) cost no
``core.ready()`` of their own (a contact's serial call had one such empty flush in four)."""

from __future__ import annotations

import asyncio
from typing import Any

from runtime.core.messages import ViewAnnouncement
from runtime.wire.control import AppMessage
from tests.drivers.test_node_guards_unit import ADDR, FakeTransport, joining, loop, member, view

__all__ = ["loop"]  # the fixture, used by name below


def counted(d: Any) -> list[str]:
    """Replace the node's flush scheduling with a record of each request."""
    asked: list[str] = []
    d._io.schedule_flush = lambda: asked.append("flush")
    return asked


def test_app_messages_alone_schedule_no_flush(loop: asyncio.AbstractEventLoop) -> None:
    d = joining(loop, FakeTransport({ADDR[1]: 1}))
    got: list[tuple[int, bytes]] = []
    d.hooks.on_app = lambda sender, data: got.append((sender, data))
    asked = counted(d)
    member(d).on_frames(1, [AppMessage(b"answer 1"), AppMessage(b"answer 2")])
    assert got == [(1, b"answer 1"), (1, b"answer 2")]  # handed on, in order
    assert asked == []


def test_a_refused_frame_schedules_no_flush_and_one_the_core_takes_does(loop: asyncio.AbstractEventLoop) -> None:
    d = joining(loop, FakeTransport({ADDR[1]: 1}))
    asked = counted(d)
    # A view from a node this joiner did not ask: refused before the core sees it.
    member(d).on_frames(9, [ViewAnnouncement(view(3, (5, 9)).to_wire())])
    assert asked == []
    # The same kind of frame from its contact reaches the core: one flush, whatever rides along.
    member(d).on_frames(1, [AppMessage(b"x"), ViewAnnouncement(view(3, (1, 2, 5)).to_wire()), AppMessage(b"y")])
    assert asked == ["flush"]
