"""The phases of a node's life, one object each; ``NodeDriver`` hands every input to the
current one.

- ``phase``: what every phase answers to (``NodePhase``), and ``NotStarted``;
- ``context``: what the phases of one running node share (``NodeContext``);
- ``waiting``: no core yet (frames wait for it); ``bootstrapping`` and ``restarting`` are
  waiting phases with a coordinator each;
- ``first``: which of them a node starts in;
- ``member``: a node with a core, joining and then in views (``join_watch``: a joiner's wait
  for its contacts);
- ``trust``: which frames a node takes from whom.
"""

from runtime.drivers.node_phases.bootstrapping import BootstrapPhase
from runtime.drivers.node_phases.context import NodeContext, NodeCounters
from runtime.drivers.node_phases.member import MemberPhase
from runtime.drivers.node_phases.phase import NodePhase, NotStarted
from runtime.drivers.node_phases.restarting import RestartPhase
from runtime.drivers.node_phases.waiting import WaitingPhase

__all__ = [
    "BootstrapPhase",
    "MemberPhase",
    "NodeContext",
    "NodeCounters",
    "NodePhase",
    "NotStarted",
    "RestartPhase",
    "WaitingPhase",
]
