"""What users write: ``@replicated``/``@ordered``/``@p2p``, ``Persistent`` fields, read options,
``da.emit`` and ``Layout``. Runs on any thread (mostly the replica's, inside user methods);
imports nothing else of the package, so user code depends on nothing but this.
"""
