"""Wire format between nodes: message encoding and stream framing, with no I/O.

``codec`` turns core messages (``runtime.core.messages``) and driver-only control frames
(``control``) into length-prefixed msgpack frames and back. Drivers own the sockets; this
package only transforms bytes, so every behaviour is testable with plain function calls.
"""
