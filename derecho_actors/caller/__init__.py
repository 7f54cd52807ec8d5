"""The caller's side, on the caller's threads (any thread but a replica's) and the client's one
socket thread: the ``Caller`` protocol and ``Handle`` (handles), query results with their
producer side, asyncio adapters, watches, and the external client: ``ClientSession`` (the
protocol, sans I/O) inside ``Client`` and its socket loop. Imports ``model`` and ``wire``.
"""
