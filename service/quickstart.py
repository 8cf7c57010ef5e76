"""The main job in one command: serve the four demo bundles and print curl lines.

``python -m service.quickstart`` serves the bundles shipped in ``demo/bundles`` (how they were
made: ``demo/train_bundles.sh``) and prints ready-to-paste ``curl`` lines once ``/readyz`` is
200. With ``--train`` it takes the long way instead, the recipe of the shipped bundles: generate
Move4Digits in its classic and its varied look, train each family's demo preset on the classic
look, fine-tune that bundle on the varied look (``--init-from``), export it to ONNX (each step
only when its result is missing), then serve ``store/``. Every step is the ordinary command a
person would type.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from models.bundle import is_bundle

__all__ = [
    "DEMO_BUNDLES",
    "DEMO_VIDEOS",
    "FAMILIES",
    "FINE_TUNE_ARGS",
    "FIRST_STAGE_ARGS",
    "bundle_name",
    "main",
    "prepare",
    "shipped",
]

log = logging.getLogger("service.quickstart")

FAMILIES = ("c3d_vll", "attention_lstm", "ms3d", "full_video")

# The demo bundles and example videos shipped with the repository.
DEMO = Path(__file__).resolve().parents[1] / "demo"
DEMO_BUNDLES = DEMO / "bundles"
DEMO_VIDEOS = DEMO / "videos"


# Flags added to the family's demo preset in the first stage of the demo recipe (the classic
# look) and in the second (fine-tuned on the varied look); demo/train_bundles.sh runs the same.
# (From scratch, the tiny attention_lstm often stays at chance under augmentation, and ms3d
# does without the tailor strategy: docs/training.md#generalising-to-a-new-look.)
FIRST_STAGE_ARGS: dict[str, tuple[str, ...]] = {
    "attention_lstm": ("--augment", "false"),
    "ms3d": ("--tailor", "true"),
}
FINE_TUNE_ARGS: dict[str, tuple[str, ...]] = {
    "c3d_vll": (),
    "attention_lstm": (),
    "ms3d": ("--tailor", "true", "--epochs", "60"),
    "full_video": (),
}


def bundle_name(family: str, data: Path) -> str:
    """``<family>-<dataset folder>``, e.g. ``c3d_vll-move4digits``."""
    return f"{family}-{data.name}"


def varied_data(data: Path) -> Path:
    """Where the varied-look copy of the demo dataset ``data`` goes: ``<data>-varied``."""
    return data.with_name(f"{data.name}-varied")


def classic_store(store: Path) -> Path:
    """Where the first-stage (classic-look) bundles of ``store`` go: ``<store>-classic``."""
    return store.with_name(f"{store.name}-classic")


def _ensure_data(data: Path, per_class: int, style: str = "classic") -> None:
    if (data / "classInd.txt").is_file():
        log.info("dataset %s is there", data)
        return
    from training.synth import generate

    log.info("generating Move4Digits (%d videos per class, %s) into %s", per_class, style, data)
    generate(data, classes="4", per_class=per_class, seed=0, style=style)


def _ensure_bundle(
    family: str, data: Path, store: Path, train_args: Sequence[str], name: str
) -> Path:
    bundle = store / name
    if is_bundle(bundle):
        log.info("bundle %s is there", bundle)
        return bundle
    cmd = [
        sys.executable,
        "-m",
        "training.run",
        "--family",
        family,
        "--data",
        str(data),
        "--out",
        str(store),
        "--name",
        bundle.name,
        *train_args,
    ]
    log.info("training: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    return bundle


def _ensure_onnx(bundle: Path) -> None:
    from models.bundle import ONNX_FILE, load_bundle

    if load_bundle(bundle, verify=False).has(ONNX_FILE):
        return
    try:
        from export.onnx import export_onnx
    except ImportError as err:  # the server then runs the bundle with PyTorch
        log.warning("no ONNX export available (%s); %s is served with PyTorch", err, bundle.name)
        return
    log.info("exporting %s to ONNX", bundle.name)
    try:
        export_onnx(bundle)
    except Exception as err:
        log.warning("ONNX export of %s failed (%s); it is served with PyTorch", bundle.name, err)


def _sample_video(data: Path) -> Path:
    test_list = data / "testlist01.txt"
    if test_list.is_file():
        for line in test_list.read_text().splitlines():
            if line.strip():
                return data / line.split()[0]
    return next(data.rglob("*.mp4"))


def prepare(
    data: Path,
    store: Path,
    *,
    families: Sequence[str] = FAMILIES,
    per_class: int = 60,
    train_args: Sequence[str] = (),
) -> list[Path]:
    """Data, bundles and ONNX files, each made only when missing; returns the bundle paths.

    ``data`` is the classic-look dataset; its varied copy is :func:`varied_data`'s, the
    first-stage bundles go to :func:`classic_store`'s and the final ones to ``store``.
    """
    varied = varied_data(data)
    _ensure_data(data, per_class)
    _ensure_data(varied, per_class, style="varied")
    store.mkdir(parents=True, exist_ok=True)
    first = classic_store(store)
    bundles = []
    for family in families:
        name = bundle_name(family, data)
        if not is_bundle(store / name):
            start = _ensure_bundle(
                family, data, first, [*FIRST_STAGE_ARGS.get(family, ()), *train_args], name
            )
            tune = [*FINE_TUNE_ARGS[family], *train_args, "--init-from", str(start)]
            _ensure_bundle(family, varied, store, tune, name)
        bundles.append(store / name)
    for bundle in bundles:
        _ensure_onnx(bundle)
    return bundles


def shipped(families: Sequence[str] = FAMILIES, store: Path = DEMO_BUNDLES) -> list[Path]:
    """The shipped demo bundles of ``families``, exported to ONNX if one lacks it.

    Raises:
        FileNotFoundError: A family's bundle is not in ``store`` (say how to make it).
    """
    bundles = [store / bundle_name(f, Path("move4digits")) for f in families]
    missing = [b.name for b in bundles if not is_bundle(b)]
    if missing:
        raise FileNotFoundError(
            f"no demo bundle {', '.join(missing)} in {store}; make them with "
            "`bash demo/train_bundles.sh` or train into store/ with `make demo-train`"
        )
    for bundle in bundles:
        _ensure_onnx(bundle)
    return bundles


def _announce_when_ready(host: str, port: int, video: Path, models: list[str]) -> None:
    """Print the curl lines once /readyz answers 200 (models load after the port opens)."""
    shown = "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host
    base = f"http://{shown}:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    else:
        return
    lines = [
        f"\nReady. Open {base}/ in a browser to try a video, or from a shell",
        f" ({models[0]} answers by default):\n",
        f"  curl -F file=@{video} {base}/recognize\n",
    ]
    for other in models[1:]:
        lines.append(f"  curl -F file=@{video} -F model={other} {base}/recognize\n")
    lines.append(f"\nModels: {base}/models   API docs: {base}/docs\n")
    print("".join(lines), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.quickstart",
        description="Serve the four shipped demo bundles; with --train, generate Move4Digits, "
        "train and export the four demo bundles (each only when missing) into --store first.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--train", action="store_true", help="train the bundles instead of serving the shipped ones"
    )
    parser.add_argument("--data", type=Path, default=Path("data/move4digits"))
    parser.add_argument(
        "--store", type=Path, default=None, help="bundle store (default: demo/bundles, or store/)"
    )
    parser.add_argument("--per-class", type=int, default=60, help="videos per class to generate")
    parser.add_argument(
        "--families", default=",".join(FAMILIES), help="comma-separated families to train and serve"
    )
    parser.add_argument(
        "--train-arg",
        action="append",
        default=[],
        help="extra flag for training.run, repeatable (e.g. --train-arg=--epochs=1)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-serve", action="store_true", help="prepare only")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("onnxscript", "onnx_ir"):  # the exporter's per-pass chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {list(FAMILIES)}")
    if args.train:
        store = args.store or Path("store")
        bundles = prepare(
            args.data,
            store,
            families=families,
            per_class=args.per_class,
            train_args=args.train_arg,
        )
        video = _sample_video(args.data).resolve()
    else:
        store = args.store or DEMO_BUNDLES
        try:
            bundles = shipped(families, store)
        except FileNotFoundError as err:
            parser.exit(2, f"{parser.prog}: {err}\n")
        video = min(DEMO_VIDEOS.glob("*.mp4"))
    names = [b.name for b in bundles]
    if args.no_serve:
        print(json.dumps({"store": str(store), "bundles": names}))
        return 0
    from service.__main__ import serve

    threading.Thread(
        target=_announce_when_ready, args=(args.host, args.port, video, names), daemon=True
    ).start()
    serve({"store": store, "host": args.host, "port": args.port, "default_model": names[0]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
