"""How one shard's multicast is tuned: plain data, kept out of the multicast's module.

``runtime.core.smc`` may be compiled (mypyc, see ``setup.py``); a configuration is built from
users' files and copied between processes (the simulator's workers pickle it), so it stays an
ordinary Python class.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.core.object_policy import ObjectPolicy


@dataclass(frozen=True, slots=True)
class MulticastConfig:
    """Tuning of one shard's multicast. Times are in the driver's clock units (seconds)."""

    window_size: int = 10_000
    null_interval: float = 0.001
    max_batch: int = 1000
    max_message_size: int = 1 << 20
    # Payload bytes of the same stretch of messages ``window_size`` counts. One message is
    # always admitted when none is outstanding, so a message above it still goes (alone).
    window_bytes: int = 32 << 20
    # Null messages a sender owes (others' messages wait on its turn in the round-robin
    # order) go at once, with the push it makes anyway, when it has nothing of its own
    # waiting to be sent (Derecho's auto-null), at most once per half ``null_interval``.
    # ``null_interval`` is then how long they wait while its own messages wait (or always,
    # with this off).
    immediate_nulls: bool = True
    # Large objects (None: off): payloads above ``objects.threshold`` go as a descriptor in
    # the order and their bytes by the block pipeline; receivers then take descriptors.
    objects: ObjectPolicy | None = None

    def __post_init__(self) -> None:
        if self.objects is not None and self.objects.threshold > self.max_message_size:
            raise ValueError(
                f"objects.threshold ({self.objects.threshold}) must not exceed max_message_size "
                f"({self.max_message_size}): payloads between them could go neither way"
            )
        if self.window_size < 1:
            raise ValueError("window_size must be at least 1")
        if self.window_bytes < 1:
            raise ValueError("window_bytes must be at least 1")
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if self.null_interval < 0:
            raise ValueError("null_interval must not be negative")
