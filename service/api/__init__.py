"""HTTP routers, one per concern: health, models, recognition, MS3D class enrolment."""

from __future__ import annotations

from service.api import classes, health, models, recognize

__all__ = ["classes", "health", "models", "recognize"]
