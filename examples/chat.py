"""A pub/sub chat room: every member sees the messages in the same order.

python examples/chat.py demo
python examples/chat.py post USER TEXT --contact HOST:PORT --certs-dir certs
python examples/chat.py history [SINCE] --contact HOST:PORT --certs-dir certs
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import threading
from pathlib import Path

import derecho_actors as da

if not __package__:  # run as `python examples/chat.py`: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from examples.client_cli import add_client_args, connect, need, run  # noqa: E402


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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["demo", "post", "history"])
    p.add_argument("args", nargs="*")
    add_client_args(p)
    a = p.parse_args(argv)
    if a.command != "demo":
        with connect(p, a) as client:
            room = client.handle(ChatRoom)
            if a.command == "post":
                user, text = need(p, a, 2, "USER TEXT")
                print(f"message {max(room.post(user, text).get(timeout=10).values())}")
            else:
                since = int(a.args[0]) if a.args else 0
                for user, text in list(room.history(since).get(timeout=10).values())[0]:
                    print(f"{user}: {text}")
        return 0
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
    sys.exit(run(main))
