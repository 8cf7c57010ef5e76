"""The reproduction study: the papers' comparisons on Move4Digits, several seeds each.

    python bench/study.py run [--family c3d_vll] [--dataset 4|extended] [--seeds 0 1 2]
    python bench/study.py report          # docs/results.md tables + docs/results_*.png

``run`` generates the datasets when missing (bench/_work/data), trains every configuration
through ``python -m training.run`` in a subprocess, evaluates the bundle also on the dataset's
alt-style test set (digit renderings and backgrounds the training style never uses), and
appends one JSON line per finished run to docs/study_runs.jsonl; finished runs are skipped, so
an interrupted study continues where it stopped. ``report`` reads that file only.

Protocol 2 (this file's): the demo presets' label-keeping augmentation, clip-level epochs over
every clip, ms3d's gamma from a calibration split never trained on, and each bundle's top-1
on the alt style too; the training data is still Move4Digits' classic look. The runs of
protocol 1 are kept in docs/study_runs_protocol1.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

# The repository first: this folder's models.py would otherwise shadow the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "_work"
RESULTS = ROOT / "docs" / "study_runs.jsonl"  # committed: the study spans sessions
PROTOCOL = 2
DOCS = ROOT / "docs"

DATASETS = {
    # name: (generator --classes, videos per class, frames per video)
    "4": ("4", 40, 32),
    "extended": ("extended", 30, 32),
    # 64-frame videos hold m = 4 clips of 16: with m = 2 the error branch of the c3d_vll
    # paper's Eq. 6 equals the pairwise distance, so full CCL cannot differ from CCL-euclidean
    # on "4".
    "4-long": ("4", 40, 64),
}
# Families run on each dataset (default: all).
ONLY_ON_DATASET = {"4-long": ("c3d_vll",)}
COMMON = ["--preset", "demo", "--workers", "0", "--threads", "2", "--progress", "false"]

# (family, configuration name, extra flags): one row of a paper's comparison each.
# ``{init:CONFIG}`` in the flags names the same dataset and seed's bundle of another
# configuration (run first, listed earlier): the fine-tuning protocols.
CONFIGS: list[tuple[str, str, list[str]]] = [
    ("c3d_vll", "clip-level CE", ["--level", "clip"]),
    ("c3d_vll", "video-level CE", ["--level", "video", "--ccl", "none"]),
    ("c3d_vll", "+ CCL-euclidean", ["--level", "video", "--ccl", "euclidean"]),
    ("c3d_vll", "+ CCL-error", ["--level", "video", "--ccl", "error"]),
    ("c3d_vll", "+ full CCL", ["--level", "video", "--ccl", "full"]),
    (
        "c3d_vll",
        "+ full CCL, fine-tuned from clip-level",
        ["--level", "video", "--ccl", "full", "--init-from", "{init:clip-level CE}"],
    ),
    ("full_video", "TSM-8 frames", ["--tsm-frames", "8"]),
    ("full_video", "uniform g=8", ["--clustering", "uniform", "--num-clusters", "8"]),
    ("full_video", "slope g=8", ["--clustering", "slope", "--num-clusters", "8"]),
    ("full_video", "cumulative g=8", ["--clustering", "cumulative", "--num-clusters", "8"]),
    ("full_video", "TSM-all frames", ["--clustering", "none"]),
    ("attention_lstm", "early fusion", ["--fusion", "early"]),
    ("attention_lstm", "late fusion", ["--fusion", "late"]),
    ("ms3d", "N-pair + repository", ["--holdout-classes", "1"]),
    ("ms3d", "+ tailor (motion boxes)", ["--holdout-classes", "1", "--tailor"]),
]
EPOCHS = {"c3d_vll": 10, "full_video": 10, "attention_lstm": 40, "ms3d": 15}

NOTES_MARKER = "<!-- notes: kept by bench/study.py report -->"

TITLES = {
    "c3d_vll": "c3d_vll: clip-level vs video-level training (its paper's Table 1)",
    "full_video": "full_video: sub-sampling vs clustering all frames (its paper's Table 1)",
    "attention_lstm": "attention_lstm: early vs late fusion (its paper's Table 4)",
    "ms3d": "ms3d: nearest-centre accuracy and open-set rejection (its paper's Section III.D)",
}


def _dataset(name: str) -> Path:
    classes, per_class, frames = DATASETS[name]
    out = WORK / "data" / f"move4digits-{name}"
    if not (out / "classInd.txt").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "training.synth",
                "--out",
                str(out),
                "--classes",
                classes,
                "--per-class",
                str(per_class),
                "--frames",
                str(frames),
                "--seed",
                "0",
            ],
            check=True,
            cwd=ROOT,
        )
    return out


def _num_classes(dataset: str) -> int:
    from training.synth import class_names

    return len(class_names(DATASETS[dataset][0]))


def _records() -> list[dict]:
    if not RESULTS.is_file():
        return []
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("protocol") == PROTOCOL]


def _done() -> set[str]:
    return {r["id"] for r in _records()}


def _run_id(dataset: str, family: str, config: str, seed: int) -> str:
    return (
        f"{dataset}-{family}-{config}-s{seed}".replace(" ", "_").replace("/", "_").replace(",", "")
    )


def _resolve(flags: list[str], dataset: str, family: str, seed: int) -> list[str]:
    """``{init:CONFIG}`` -> that configuration's bundle for this dataset and seed."""
    out = []
    for flag in flags:
        if flag.startswith("{init:") and flag.endswith("}"):
            flag = str(WORK / "store" / _run_id(dataset, family, flag[6:-1], seed))
        out.append(flag)
    return out


def _alt_set(dataset: str) -> list[tuple[Path, int]]:
    """The dataset's alt-style test list (same classes and frames, seed 1)."""
    from training.datasets import load_dataset
    from training.synth import generate

    classes, per_class, frames = DATASETS[dataset]
    out = WORK / "data" / f"move4digits-{dataset}-alt"
    if not (out / "classInd.txt").is_file():
        generate(
            out, classes=classes, per_class=per_class, seed=1, frames=frames, style="alt",
            progress=False,
        )  # fmt: skip
    return [(e.path, e.label) for e in load_dataset(out).test]


def _alt_top1(bundle_dir: Path, dataset: str) -> float:
    """Top-1 of the bundle on the alt-style test set (ms3d: nearest centre, all classes)."""
    import math

    import torch

    from models.bundle import REPOSITORY_FILE
    from models.repository import Repository
    from training.evaluate import evaluate_videos

    bundle = load_bundle(bundle_dir)
    model = bundle.build_model()
    centres = None
    if bundle.family == "ms3d":
        centres = Repository.load(bundle.file(REPOSITORY_FILE)).centres_tensor()
    videos = [(p, y) for p, y in _alt_set(dataset) if y < len(bundle.labels)]
    torch.set_num_threads(2)
    with torch.no_grad():
        summary, _ = evaluate_videos(
            model, videos, bundle.spec, len(bundle.labels), batch_size=16,
            max_inputs=bundle.eval_max_clips, centres=centres,
            gamma=math.inf if centres is not None else None,
        )  # fmt: skip
    return cast(float, summary["top1"])


def _command(family: str, flags: list[str], data: Path, seed: int, run_id: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "training.run",
        "--family",
        family,
        "--data",
        str(data),
        "--out",
        str(WORK / "store"),
        "--name",
        run_id,
        "--seed",
        str(seed),
        "--epochs",
        str(EPOCHS[family]),
        *COMMON,
        *flags,
    ]


def run(families: list[str] | None, datasets: list[str], seeds: list[int]) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    done = _done()
    for dataset in datasets:
        data = _dataset(dataset)
        for seed in seeds:
            for family, config, flags in CONFIGS:
                if families and family not in families:
                    continue
                if family not in ONLY_ON_DATASET.get(dataset, (family,)):
                    continue
                run_id = _run_id(dataset, family, config, seed)
                if run_id in done:
                    continue
                flags = _resolve(flags, dataset, family, seed)
                cmd = _command(family, flags, data, seed, run_id)
                print("$", shlex.join(cmd[1:]).replace(str(ROOT) + "/", ""), flush=True)
                t0 = time.time()
                proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
                wall = time.time() - t0
                if proc.returncode != 0:
                    print(proc.stderr[-2000:], file=sys.stderr)
                    continue
                metrics = load_bundle(WORK / "store" / run_id).metrics
                metrics["alt_style_top1"] = _alt_top1(WORK / "store" / run_id, dataset)
                record = {
                    "protocol": PROTOCOL,
                    "id": run_id,
                    "dataset": dataset,
                    "family": family,
                    "config": config,
                    "seed": seed,
                    "wall_s": round(wall, 1),
                    "metrics": metrics,
                    "command": shlex.join(["python", *cmd[1:]]).replace(str(ROOT) + "/", ""),
                }
                with open(RESULTS, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                print(
                    f"  top1={metrics.get('top1'):.3f} alt={metrics['alt_style_top1']:.3f} "
                    f"wall={wall:.0f}s",
                    flush=True,
                )


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def report(out: Path | None = None, png_suffix: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _records()
    lines = [
        "# Reproduction study on Move4Digits",
        "",
        "Generated by `python bench/study.py report` from the runs of `python bench/study.py run`",
        "(2 CPU cores, `--preset demo`, each family's `_tiny` variant). Figures are video-level",
        "test accuracy in percent, mean ± standard deviation over seeds; `n` is the number of",
        "seeds. Datasets: `4` = Move4Digits, 4 classes x 40 videos (30 train / 10 test per",
        "class); `extended` = 12 motion classes x 30 videos; `4-long` = the 4 classes with",
        "64-frame videos (4 clips each, c3d_vll only). All videos are 32 frames unless said.",
        "Protocol 2: the demo presets' label-keeping augmentation, clip-level epochs over every",
        "clip, and ms3d's gamma from a calibration split never trained on; the data is",
        "Move4Digits' classic look. `alt top-1` is the same bundle on the alt-style test set",
        "(renderings and backgrounds the classic look never uses; seed 1): generalisation to a",
        "look never trained on.",
        "Orderings are reported as they came out, including those that do not match the papers.",
        "Each family's paper is cited at the top of its module (`models/c3d_vll.py`,",
        '`models/full_video.py`, `models/attention_lstm.py`, `models/ms3d.py`); "its paper"',
        "below means that one.",
        "",
    ]
    for family in EPOCHS:
        rows = [r for r in records if r["family"] == family]
        if not rows:
            continue
        lines += [f"## {TITLES[family]}", ""]
        configs = [c for f, c, _ in CONFIGS if f == family]
        extra = family == "ms3d"
        header = (
            "| dataset | configuration | n | top-1 | top-1 per seed | alt top-1 | top-5 "
            "| clip accuracy | wall s/run |"
        )
        if extra:
            header = (
                "| dataset | configuration | n | top-1 (nearest centre) | top-1 per seed "
                "| alt top-1 | in-class acceptance | unknown rejection | wall s/run |"
            )
        lines += [header, "|" + " --- |" * (header.count("|") - 1)]
        fig, ax = plt.subplots(figsize=(7, 3.2))
        width = 0.8 / max(1, len(DATASETS))
        for d_i, dataset in enumerate(DATASETS):
            means, stds, names = [], [], []
            for config in configs:
                sel = sorted(
                    (r for r in rows if r["dataset"] == dataset and r["config"] == config),
                    key=lambda r: r["seed"],
                )
                if not sel:
                    continue
                top1 = [r["metrics"]["top1"] for r in sel]
                seeds = " / ".join(f"{100 * v:.0f}" for v in top1)
                wall = statistics.fmean(r["wall_s"] for r in sel)
                alt = _mean_std([r["metrics"]["alt_style_top1"] for r in sel])
                if extra:
                    acc = [r["metrics"].get("in_class_acceptance", float("nan")) for r in sel]
                    rej = [r["metrics"].get("unknown_rejection", float("nan")) for r in sel]
                    lines.append(
                        f"| {dataset} | {config} | {len(sel)} | {_mean_std(top1)} | {seeds} | "
                        f"{alt} | {_mean_std(acc)} | {_mean_std(rej)} | {wall:.0f} |"
                    )
                else:
                    top5 = [r["metrics"]["top5"] for r in sel]
                    clip = [r["metrics"]["clip_accuracy"] for r in sel]
                    lines.append(
                        f"| {dataset} | {config} | {len(sel)} | {_mean_std(top1)} | {seeds} | "
                        f"{alt} | {_mean_std(top5)} | {_mean_std(clip)} | {wall:.0f} |"
                    )
                names.append(config)
                means.append(100 * statistics.fmean(top1))
                stds.append(100 * (statistics.stdev(top1) if len(top1) > 1 else 0.0))
            if names:
                xs = [i + d_i * width for i in range(len(names))]
                ax.bar(xs, means, width, yerr=stds, capsize=3, label=f"dataset {dataset}")
                ax.set_xticks([i + width * (len(DATASETS) - 1) / 2 for i in range(len(names))])
                ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
        chance: dict[int, str] = {}
        for dataset in DATASETS:
            if any(r["dataset"] == dataset for r in rows):
                chance.setdefault(_num_classes(dataset), ("--", ":")[len(chance) % 2])
        for n_classes, style in chance.items():
            ax.axhline(
                100 / n_classes,
                color="grey",
                linestyle=style,
                linewidth=0.8,
                label=f"chance ({n_classes} classes)",
            )
        ax.set_ylabel("video top-1 (%)")
        ax.set_ylim(0, 105)
        ax.set_title(TITLES[family], fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        png = DOCS / f"results_{family}{png_suffix}.png"
        fig.savefig(png, dpi=110)
        plt.close(fig)
        sweeps = [r for r in rows if "open_set_sweep" in r["metrics"]]
        if sweeps:
            lines += [
                "",
                "Open-set trade-off over the gamma percentile (mean over the runs that have it):",
                "",
                "| dataset | percentile | in-class acceptance | unknown rejection | n |",
                "| --- | --- | --- | --- | --- |",
            ]
            for dataset in DATASETS:
                sel = [r["metrics"]["open_set_sweep"] for r in sweeps if r["dataset"] == dataset]
                for i, row in enumerate(sel[0] if sel else []):
                    acc = [s_[i]["in_class_acceptance"] for s_ in sel]
                    rej = [s_[i]["unknown_rejection"] for s_ in sel]
                    lines.append(
                        f"| {dataset} | {row['percentile']:g} | {_mean_std(acc)} | "
                        f"{_mean_std(rej)} | {len(sel)} |"
                    )
        example = next(r for r in rows)
        lines += [
            "",
            f"![{family}]({png.name})",
            "",
            "Exact command of each run (one example; the",
            "others differ in `--seed` and the comparison flags listed in `bench/study.py`):",
            "",
            "```bash",
            example["command"],
            "```",
            "",
        ]
    DOCS.mkdir(exist_ok=True)
    out = out or DOCS / "results.md"
    # Hand-written reading of the figures below the marker survives regeneration.
    notes = ""
    if out.is_file() and NOTES_MARKER in out.read_text():
        notes = out.read_text().split(NOTES_MARKER, 1)[1]
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n" + NOTES_MARKER + notes)
    tmp.replace(out)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--family", action="append", choices=list(EPOCHS))
    r.add_argument("--dataset", action="append", choices=list(DATASETS))
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    rep = sub.add_parser("report")
    rep.add_argument("--out", type=Path, help="Markdown file (default docs/results.md)")
    rep.add_argument("--png-suffix", default="", help="suffix of the plot files' names")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        run(args.family, args.dataset or list(DATASETS), args.seeds)
    else:
        report(args.out, args.png_suffix)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
