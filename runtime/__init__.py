"""The derecho-actors engine. Users import the user-facing package, never this one."""
