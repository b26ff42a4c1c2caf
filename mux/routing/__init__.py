"""Routing: resolving model identifiers, planning attempts (``plan``), shared health, route versions and the
live state swapped on reload."""
