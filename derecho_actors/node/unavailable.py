"""Why a shard has no replicas in a view, in words: what calls to it are refused or time out
with, on this node's and its clients' behalf."""

from __future__ import annotations

from runtime.core.layout import ShardId
from runtime.core.view import View


def unavailable(view: View, shard: ShardId) -> str:
    """Why ``shard`` has no replicas in ``view``, for people."""
    if not view.layout.adequate:
        return (
            f"view {view.vid} has {view.n} members {list(view.members)}, too few for the layout "
            f"({view.layout.describe_shortfall()}); no shard runs until nodes join"
        )
    known = sorted(str(s) for s in view.layout.shards if s.type_name == shard.type_name)
    return f"the layout of view {view.vid} has no shard {shard} (shards of {shard.type_name}: {', '.join(known) or 'none'})"
