"""The recognition service: ``python -m service`` serves a store of model bundles over HTTP.

See ``docs/service.md`` for the API. :func:`create_app` builds the FastAPI app,
:class:`Settings` holds every setting (environment ``ACTREC_*``).
"""

from __future__ import annotations

from service.app import create_app
from service.settings import Settings

__all__ = ["Settings", "create_app"]
