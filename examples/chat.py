"""A pub/sub chat room: every member sees the messages in the same order.

python examples/chat.py demo
"""

from __future__ import annotations

import hashlib
import sys
import threading

import derecho_actors as da


@da.replicated
class ChatRoom:
    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []

    @da.ordered
    def post(self, user: str, text: str) -> int:
        self.log.append((user, text))
        return len(self.log)

    @da.ordered
    def transcript_digest(self) -> str:
        # hashlib, not hash(): str hashes differ between processes (hash randomisation).
        return hashlib.sha256(repr(self.log).encode()).hexdigest()

    @da.p2p
    def history(self, since: int = 0) -> list[tuple[str, str]]:
        return self.log[since:]


LAYOUT = da.Layout({ChatRoom: da.ShardPolicy(min_nodes=3)})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["demo"]:
        print(__doc__)
        return 2
    with da.local_cluster(nodes=3, types=[ChatRoom], layout=LAYOUT) as cluster:

        def chatter(user: str) -> None:
            with cluster.new_client() as client:
                room = client.handle(ChatRoom)
                for r in [room.post(user, f"message {i} from {user}") for i in range(100)]:
                    r.get(timeout=30)

        threads = [threading.Thread(target=chatter, args=(u,)) for u in ("ann", "bob", "cy")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        digests = cluster.handle(ChatRoom).transcript_digest().get(timeout=10)
        print(
            f"300 messages posted by 3 users; every member holds the same transcript: {len(set(digests.values())) == 1}"
        )
        print("last three:", cluster.handle(ChatRoom).history(297).get(timeout=10).popitem()[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
