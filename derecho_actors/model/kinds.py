"""The two kinds of replicated method: an ordered call runs at every replica in the total order;
a P2P call runs at one replica."""

ORDERED = "ordered"
P2P = "p2p"
