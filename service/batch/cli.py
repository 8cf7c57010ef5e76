"""``python -m service.batch --model STORE/NAME INPUT... [--out FILE]``: the command line.

See ``docs/batch.md`` for the inputs, the output lines, resuming, live sources and Ray.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from models.bundle import BundleError
from models.repository import RepositoryError
from service.api.recognize import DEFAULT_WINDOW_S
from service.backends import BackendUnavailable
from service.batch.engine import Options, Recognizer, Record
from service.batch.inputs import Inputs, expand
from service.batch.live import LiveSource, open_stdin, open_url
from service.batch.output import FORMATS, Output, OutputError, format_for, kind_of
from service.settings import Settings
from service.store import ModelStore

__all__ = ["build_parser", "main"]

log = logging.getLogger("service.batch")

# Exit statuses besides 0 (the run finished; bad videos are lines of the output).
EXIT_FAILED = 1  # the model could not be loaded, or a live source ended with an error
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# Network inputs per call for live sources: a clip is run as soon as its frames arrived.
LIVE_BATCH_SIZE = 1


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m service.batch",
        description="Recognise collections of videos, pipes and live streams with a model "
        "bundle, the same way POST /recognize does: one output line per video. The service "
        "settings (decode caps, threads) come from the environment as ACTREC_<NAME>.",
        allow_abbrev=False,
    )
    p.add_argument("--model", required=True, help="the bundle directory (STORE/NAME)")
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="video files, folders (recursive, by video extension), list files (.txt/.lst/"
        ".list or @FILE: one path per line), - for paths on standard input, or live URLs "
        "(rtsp://, rtmp://, http(s)://)",
    )
    p.add_argument(
        "--out", type=Path, help="output file, appended and resumable (default: standard output)"
    )
    p.add_argument("--format", choices=FORMATS, help="jsonl or csv (default: by --out's suffix)")
    p.add_argument("--timeline", action="store_true", help="add each video's timeline to its line")
    p.add_argument(
        "--window-s",
        type=_positive_float,
        default=DEFAULT_WINDOW_S,
        help="seconds per timeline window for ms3d and full_video (default %(default)s)",
    )
    p.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime", "tensorrt"],
        help="network backend, as the service picks it (ACTREC_BACKEND, default auto)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="ACTREC_DEVICE")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=2,
        help="videos decoded at once (per Ray actor with --ray; default %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        help="network inputs per call of one video (ACTREC_BATCH_SIZE, default 16; "
        f"{LIVE_BATCH_SIZE} for live sources)",
    )
    p.add_argument(
        "--batch-delay-ms",
        type=float,
        default=5.0,
        help="longest a network call waits for other videos' calls to join its forward "
        "(ACTREC_MAX_BATCH_DELAY_MS; default %(default)s; 0: no joining)",
    )
    p.add_argument(
        "--stdin-stream",
        action="store_true",
        help="recognise an MPEG-TS or Matroska stream read from standard input (a pipe)",
    )
    p.add_argument(
        "--stream-timeout",
        type=_positive_float,
        default=30.0,
        help="URL sources: longest wait to connect and for data (default %(default)s s)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run on a Ray cluster (auto, HOST:PORT or ray://HOST:PORT; no address: "
        "RAY_ADDRESS, else a new local instance)",
    )
    p.add_argument(
        "--ray-actors", type=_positive_int, help="actor pool size (default: sized to the cluster)"
    )
    p.add_argument(
        "--ray-cpus-per-actor",
        type=_positive_float,
        default=1.0,
        help="CPUs reserved per actor (default %(default)s)",
    )
    p.add_argument(
        "--ray-gpus-per-actor",
        type=float,
        help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)",
    )
    p.add_argument(
        "--ray-videos-per-call",
        type=_positive_int,
        default=4,
        help="videos handed to an actor at once (default %(default)s)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="progress bar on standard error (default: when it is a terminal)",
    )
    return p


def _settings(args: argparse.Namespace, bundle: Path, live: bool) -> Settings:
    overrides: dict[str, Any] = {
        "store": bundle.parent,
        "load_in_background": False,
        "max_batch_delay_ms": args.batch_delay_ms,
    }
    for key in ("backend", "device", "batch_size"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if live and args.batch_size is None:
        overrides["batch_size"] = LIVE_BATCH_SIZE
    return Settings(**overrides)


def _bundle_path(model: str) -> Path:
    path = Path(model)
    if not path.is_dir() and not path.is_absolute():
        store = Settings().store  # a bare name: a bundle of ACTREC_STORE
        if (store / model).is_dir():
            return store / model
    return path


class _Progress:
    """The progress bar: videos done (or segments, for a live source), rate, ETA, errors."""

    def __init__(self, total: int | None, show: bool, unit: str) -> None:
        self.errors = 0
        self.bar = tqdm(
            total=total, unit=unit, file=sys.stderr, disable=not show, dynamic_ncols=True
        )
        self.bar.set_postfix(errors=0)

    def count(self, record: Record) -> None:
        if kind_of(record) == "error":
            self.errors += 1
            self.bar.set_postfix(errors=self.errors)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.stdin_stream and "-" in args.inputs:
        parser.error("--stdin-stream reads the video from standard input: no '-' input too")
    try:
        inputs = expand(args.inputs, sys.stdin)
    except OSError as err:
        parser.error(f"cannot read a list of inputs: {err}")
    live = args.stdin_stream or bool(inputs.urls)
    if live and inputs.videos:
        parser.error("live sources (URLs, --stdin-stream) and files go in separate runs")
    if live and args.ray is not None:
        parser.error("--ray recognises files; live sources run on this machine")
    if not live and not inputs.videos:
        parser.error("nothing to recognise: give video files, folders, lists or -")
    try:
        bundle = _bundle_path(args.model)
        settings = _settings(args, bundle, live)
        model = ModelStore(settings).load_one(bundle)
    except (BundleError, RepositoryError, BackendUnavailable, OSError, ValueError) as err:
        print(f"error: cannot load the model {args.model}: {err}", file=sys.stderr)
        return EXIT_FAILED
    try:
        output = Output(args.out, format_for(args.out, args.format))
    except (OutputError, OSError) as err:
        print(f"error: {err}; choose another --out", file=sys.stderr)
        return EXIT_USAGE
    if output.models - {model.name}:
        output.close()
        known = ", ".join(sorted(output.models))
        print(f"error: {args.out} holds answers of {known}, not of {model.name}", file=sys.stderr)
        return EXIT_USAGE
    options = Options(timeline=args.timeline, window_s=args.window_s, workers=args.workers)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    with output, _sigterm_as_interrupt():
        try:
            if live:
                return _run_live(args, inputs, Recognizer(model, settings, options), output, show)
            _run_files(args, bundle, inputs, Recognizer(model, settings, options), output, show)
        except KeyboardInterrupt:
            print("interrupted: every line written is whole; rerun to resume", file=sys.stderr)
            return EXIT_INTERRUPTED
    return 0


def _run_files(
    args: argparse.Namespace,
    bundle: Path,
    inputs: Inputs,
    recognizer: Recognizer,
    output: Output,
    show: bool,
) -> None:
    """The videos not yet answered in the output, here or on Ray."""
    todo = [(key, path) for key, path in inputs.videos if not output.is_answered(key)]
    skipped = len(inputs.videos) - len(todo)
    if skipped:
        print(f"{skipped} of {len(inputs.videos)} videos already answered", file=sys.stderr)
    progress = _Progress(len(todo), show, "video")
    started = time.perf_counter()

    def write(record: Record) -> None:
        output.write(record)
        progress.count(record)

    try:
        if args.ray is not None and todo:
            _run_ray(args, bundle, recognizer, todo, write)
        else:
            with closing(recognizer.recognise_all(todo)) as records:
                for record in records:
                    write(record)
    finally:
        progress.close()
    seconds = time.perf_counter() - started
    rate = len(todo) / seconds if seconds > 0 else 0.0
    print(
        f"{len(todo)} videos in {seconds:.1f} s ({rate:.2f} videos/s), {progress.errors} errors",
        file=sys.stderr,
    )


def _run_ray(
    args: argparse.Namespace,
    bundle: Path,
    recognizer: Recognizer,
    todo: list[tuple[str, str]],
    write: Callable[[Record], None],
) -> None:
    try:
        from service.batch.ray_run import RayPlan, plan_actors, run_on_ray
    except ImportError as err:
        raise SystemExit(f"error: --ray needs Ray: pip install 'actrec[scale]' ({err})") from err

    def plan(resources: dict[str, float]) -> RayPlan:
        return plan_actors(
            resources,
            actors=args.ray_actors,
            cpus_per_actor=args.ray_cpus_per_actor,
            gpus_per_actor=args.ray_gpus_per_actor,
            videos_per_call=args.ray_videos_per_call,
        )

    pool = run_on_ray(
        args.ray or None,
        bundle,
        recognizer.settings,
        recognizer.options,
        todo,
        write=write,
        plan=plan,
    )
    print(f"ran on {pool.actors} Ray actors", file=sys.stderr)


def _run_live(
    args: argparse.Namespace,
    inputs: Inputs,
    recognizer: Recognizer,
    output: Output,
    show: bool,
) -> int:
    """Every live source at once, each on its own thread (cameras side by side): segment
    lines as they come, then each source's final line; 1 if any source ended in an error."""
    keep_all = recognizer.model.spec.sampler != "consecutive"  # read twice
    spool = recognizer.settings.upload_dir
    sources = [
        open_url(url, keep_all=keep_all, timeout_s=args.stream_timeout, spool_dir=spool)
        for url in inputs.urls
    ]
    if args.stdin_stream:
        sources.append(open_stdin(sys.stdin.buffer, keep_all=keep_all, spool_dir=spool))
    progress = _Progress(None, show, "segment")

    def segment(record: Record) -> None:
        output.write(record)
        progress.count(record)

    def run(source: LiveSource) -> Record:
        try:
            return recognizer.recognise_live(source, segment)
        finally:
            source.close()

    failed = False
    try:
        with ThreadPoolExecutor(len(sources), thread_name_prefix="actrec-live") as pool:
            try:
                for record in pool.map(run, sources):
                    output.write(record)
                    failed |= kind_of(record) == "error"
            except BaseException:
                recognizer.stop()  # first: a source that ends now is not a clean end
                for source in sources:
                    source.abort()
                raise
    finally:
        progress.close()
    return EXIT_FAILED if failed else 0


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM handled as Ctrl-C while the run goes: it stops cleanly, every line whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
