"""Generalisation to a look never trained on: each bundle's accuracy on fresh Move4Digits
videos of each style: ``classic`` and ``varied`` (the demo bundles' two training looks, on
the digit pool and seed the training never used) and ``alt`` (digit renderings and
backgrounds neither of the others uses).

    python bench/cross_style.py [--store demo/bundles] [--per-class 80] [--seed 1]

Both test sets are generated into bench/_work/data (the test list of each: the generator's
held-out digits) with a seed the bundles were not trained on, then every bundle is evaluated
through ``training.evaluate`` (the service's decode, sampling and aggregation). For ms3d the
top-1 is by nearest centre over all of the bundle's classes (in brackets: over the classes it
trained on / over its held-out class, added to the repository after training), and
``unknown`` is the share of videos farther than the bundle's gamma from every centre. Prints
a Markdown table and writes it with the figures to docs/cross_style.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

# The repository first: this folder's models.py would otherwise shadow the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from models.bundle import REPOSITORY_FILE, is_bundle, load_bundle
from models.repository import Repository
from training.datasets import load_dataset
from training.evaluate import evaluate_videos
from training.synth import generate

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "_work" / "data"
OUT = ROOT / "docs" / "cross_style.json"
STYLES = ("classic", "varied", "alt")


def _test_set(style: str, per_class: int, seed: int) -> list[tuple[Path, int]]:
    data = WORK / f"move4digits-{style}-p{per_class}-s{seed}"
    if not (data / "classInd.txt").is_file():
        generate(data, classes="4", per_class=per_class, seed=seed, style=style, progress=False)
    return [(e.path, e.label) for e in load_dataset(data).test]


def _evaluate(bundle_dir: Path, videos: list[tuple[Path, int]]) -> dict[str, Any]:
    bundle = load_bundle(bundle_dir)
    model = bundle.build_model()
    labels = bundle.labels
    kwargs: dict[str, Any] = {"batch_size": 16, "max_inputs": bundle.eval_max_clips}
    # The generated class order is the bundles' (move_up, move_down, move_left, move_right).
    known = [(p, y) for p, y in videos if y < len(labels)]
    figures: dict[str, Any] = {"videos": len(known)}
    with torch.no_grad():
        if bundle.family != "ms3d":
            summary, _ = evaluate_videos(model, known, bundle.spec, len(labels), **kwargs)
            figures["top1"] = summary["top1"]
            return figures
        repo = Repository.load(bundle.file(REPOSITORY_FILE))
        centres = repo.centres_tensor()
        nearest, ranked = evaluate_videos(
            model, known, bundle.spec, len(labels), centres=centres, gamma=math.inf, **kwargs
        )
        _, judged = evaluate_videos(
            model, known, bundle.spec, len(labels), centres=centres, gamma=repo.gamma, **kwargs
        )
    held_out = {labels.index(c) for c in bundle.manifest["training"].get("held_out_classes", [])}
    figures["top1"] = nearest["top1"]
    for part, members in (("trained", False), ("held_out", True)):
        hits = [o.order[0] == o.label for o in ranked if (o.label in held_out) == members]
        figures[f"top1_{part}"] = sum(hits) / len(hits) if hits else math.nan
    figures["unknown"] = sum(o.unknown for o in judged) / max(1, len(judged))
    figures["gamma"] = repo.gamma
    return figures


def _top1(figures: dict[str, Any]) -> str:
    """``top-1`` in percent; for ms3d also over its trained and its held-out classes."""
    text = f"{100 * figures['top1']:.1f}%"
    if "top1_trained" in figures:
        text += f" ({100 * figures['top1_trained']:.0f} / {100 * figures['top1_held_out']:.0f})"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=ROOT / "demo" / "bundles")
    parser.add_argument("--per-class", type=int, default=80, help="videos per class generated")
    parser.add_argument("--seed", type=int, default=1, help="generator seed of the test sets")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    sets = {style: _test_set(style, args.per_class, args.seed) for style in STYLES}
    rows = []
    for bundle_dir in sorted(p for p in args.store.iterdir() if is_bundle(p)):
        started = time.perf_counter()
        row: dict[str, Any] = {"bundle": bundle_dir.name}
        for style, videos in sets.items():
            row[style] = _evaluate(bundle_dir, videos)
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [
        "| bundle | " + " | ".join(f"{s} top-1" for s in STYLES) + " | ms3d unknown ("
        + " / ".join(STYLES) + ") |",
        "|" + " --- |" * (len(STYLES) + 2),
    ]  # fmt: skip
    for row in rows:
        top1 = " | ".join(_top1(row[s]) for s in STYLES)
        unknown = (
            " / ".join(f"{100 * row[s]['unknown']:.0f}%" for s in STYLES)
            if "unknown" in row["alt"]
            else "-"
        )
        lines.append(f"| {row['bundle']} | {top1} | {unknown} |")
    table = "\n".join(lines)
    print(table)
    record = {
        "command": "python bench/cross_style.py " + " ".join(argv or sys.argv[1:]),
        "store": str(args.store),
        "per_class": args.per_class,
        "seed": args.seed,
        "videos_per_style": {s: len(v) for s, v in sets.items()},
        "rows": rows,
        "table": table,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
