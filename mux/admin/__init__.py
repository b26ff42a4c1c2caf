"""The admin API under ``/admin/``."""

from .routes import PREFIX, Admin

__all__ = ["PREFIX", "Admin"]
