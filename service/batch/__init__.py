"""Recognising collections of videos, pipes and live streams: ``python -m service.batch``.

The same pipeline as ``POST /recognize`` (the streaming core, the service's decode caps,
answers and error codes) over many videos at once, resumably, on one machine
(:mod:`service.batch.engine`) or on a Ray cluster (:mod:`service.batch.ray_run`); live and
piped sources through :mod:`service.batch.live`. Usage: ``docs/batch.md``.
"""
