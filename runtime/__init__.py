"""The derecho-actors engine. Users import ``derecho_actors``, never this package."""
