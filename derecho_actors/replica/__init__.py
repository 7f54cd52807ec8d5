"""One replica, on its own pykka actor thread: the object, its persistent store and log, the
change-event log, the exactly-once session table, and reads of the past. Imports ``model`` and
``wire``.
"""
