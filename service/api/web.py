"""``GET /``: the web page (placeholder until the page lands)."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter(tags=["web"])
