"""The actor layer's messages and their encoding: calls, replies, state transfer, read options,
change events and state digests. Pure data and functions, used on every thread; imports only
``model``.
"""
