"""bench/gpu_check.py without a GPU: the dry run says what it skipped and why, fakes nothing,
writes the same rows as JSON under $OUT, and its one CPU-able GPU step (compiling the
plugin's AOT kernel to PTX) really runs where Triton is installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_reports_what_it_skipped(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--dry-run", "--families", "c3d_vll", "full_video"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "| section | model | check | result | status |"
    table = [line for line in lines if line.startswith("| ") and not line.startswith("| ---")][1:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = summary["rows"]
    assert summary["dry_run"] is True and len(rows) == len(table)
    by_section: dict[str, list[dict]] = {}
    for row in rows:
        by_section.setdefault(row["section"], []).append(row)
    assert set(by_section) == {"env", "torch", "onnxruntime", "clustering", "tensorrt"}
    # Every GPU measurement is skipped with its reason; none claims a number.
    for section in ("torch", "onnxruntime"):
        for row in by_section[section]:
            assert row["status"] == "skipped" and row["result"] == "skipped: --dry-run", row
    assert [r["model"] for r in by_section["torch"]] == [
        "c3d_vll_tiny",
        "c3d_vll",
        "full_video_tiny",
        "full_video",
    ]
    assert by_section["tensorrt"][0]["status"] in ("skipped", "unavailable")
    clustering = {r["check"]: r for r in by_section["clustering"]}
    assert clustering["fused and JIT kernels vs reference"]["status"] == "skipped"
    compiled = [r for c, r in clustering.items() if c.startswith("AOT PTX compile")]
    try:
        import triton  # noqa: F401 - the compile row runs only with Triton
    except ImportError:
        assert clustering["Triton kernels"]["status"] == "unavailable"
    else:
        (row,) = compiled
        assert row["status"] == "ok" and "means_kernel" in row["result"], row
    assert not [r for r in rows if r["status"] == "FAIL"]
    assert lines[-1].startswith(f"{len(rows)} rows, 0 failed")
