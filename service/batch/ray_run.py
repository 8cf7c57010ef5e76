"""Scale-out: the same recognizer on a Ray cluster, through Ray Data.

The videos become a dataset of ``(path, file)`` rows; ``map_batches`` runs :class:`_Recognise`
on an actor pool (one actor per GPU when the cluster has GPUs, else one per
``cpus_per_actor`` CPUs). Each actor loads the bundle once and recognises its batches with the
local :class:`service.batch.engine.Recognizer` (its workers, inference joined across the
batch's videos); its lines stream back to the driver, which writes them as a local run does.
The bundle and the videos must be at the same paths on every node (shared storage), and the
nodes must have this package installed (the ``scale`` extra). See ``docs/batch.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.batch.engine import Options, Recognizer, Record
from service.settings import Settings
from service.store import ModelStore

__all__ = ["RayPlan", "plan_actors", "run_on_ray"]

log = logging.getLogger(__name__)

# Settings that are secrets or only mean something to a server: not sent to the actors.
_NOT_SENT = {"admin_token", "api_keys"}


@dataclass(frozen=True)
class RayPlan:
    """How the actor pool is laid out.

    Attributes:
        actors: Actors in the pool.
        cpus_per_actor: CPUs reserved per actor (its decoders and, on CPU, the network).
        gpus_per_actor: GPUs per actor (0: CPU actors).
        videos_per_call: Videos handed to an actor at once (a ``map_batches`` batch).
    """

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    videos_per_call: int


def plan_actors(
    resources: dict[str, float],
    *,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float | None = None,
    videos_per_call: int = 4,
) -> RayPlan:
    """The pool for a cluster of ``resources`` (``ray.cluster_resources()``): by default one
    actor per GPU where there are GPUs, else one per ``cpus_per_actor`` CPUs."""
    gpus = float(resources.get("GPU", 0.0))
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus >= 1 else 0.0
    if actors is None:
        if gpus_per_actor > 0:
            actors = int(gpus // gpus_per_actor)
        else:
            actors = int(float(resources.get("CPU", 1.0)) // cpus_per_actor)
    return RayPlan(max(1, actors), cpus_per_actor, gpus_per_actor, max(1, videos_per_call))


class _Recognise:
    """The ``map_batches`` callable: one per actor, the model loaded once."""

    def __init__(self, bundle: str, settings: dict[str, Any], options: dict[str, Any]) -> None:
        loaded = Settings(**settings)
        self.recognizer = Recognizer(
            ModelStore(loaded).load_one(Path(bundle)), loaded, Options(**options)
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        videos = [(str(k), str(f)) for k, f in zip(batch["path"], batch["file"])]
        lines = [json.dumps(r) for r in self.recognizer.recognise_all(videos)]
        return {"line": np.array(lines, dtype=object)}


def run_on_ray(
    address: str | None,
    bundle: Path,
    settings: Settings,
    options: Options,
    videos: list[tuple[str, str]],
    *,
    write: Callable[[Record], None],
    plan: Callable[[dict[str, float]], RayPlan] = plan_actors,
) -> RayPlan:
    """Recognise ``videos`` on the Ray cluster at ``address`` and ``write`` each line as it
    comes back; returns the pool it used.

    Args:
        address: The cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); ``None``: the one
            this process is connected to, else ``RAY_ADDRESS``, else a new local instance.
        bundle: The model bundle (the same path on every node).
        settings: The service settings, sent to the actors as they are here.
        options: The recognizer options of each actor.
        videos: ``(key, absolute path)`` per video.
        write: Called on the driver with each line.
        plan: The actor pool for the cluster's resources.

    Raises:
        ImportError: Ray is not installed (``pip install 'actrec[scale]'``).
    """
    # The optional scale extra: mypy sees it where it is installed, and skips it where not.
    import ray  # type: ignore[import-not-found, unused-ignore]
    import ray.data  # type: ignore[import-not-found, unused-ignore]

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    try:
        pool = plan(ray.cluster_resources())
        sent = settings.model_dump(exclude=_NOT_SENT)
        if not settings.compute_threads:
            # Each actor's share of the machine, not the library default of every core.
            sent["compute_threads"] = max(1, int(pool.cpus_per_actor))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver shows its own
        rows = ray.data.from_items([{"path": key, "file": path} for key, path in videos])
        lines = rows.map_batches(
            _Recognise,
            fn_constructor_kwargs={
                "bundle": str(bundle.resolve()),
                "settings": sent,
                "options": dataclasses.asdict(options),
            },
            batch_size=pool.videos_per_call,
            compute=ray.data.ActorPoolStrategy(size=pool.actors),
            num_cpus=pool.cpus_per_actor,
            num_gpus=pool.gpus_per_actor or None,
        )
        for row in lines.iter_rows():
            write(json.loads(row["line"]))
        return pool
    finally:
        if started_here:
            ray.shutdown()
