"""Shared benchmark helpers: timing, byte counting, dataset building, result tables."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

import lakever as lv
from lakever import _delta, sample
from lakever.storage import Location

ROOT = Path(__file__).resolve().parent.parent


_PEAK_RSS = """
def _peak_rss():
    # VmHWM is this process's own peak. ru_maxrss is not: after fork and exec
    # it starts from the parent's resident size (a 3 GB parent made a child
    # that peaked at 11 MB report 3 GB).
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
"""


def in_child(code: str, **args: Any) -> dict[str, Any]:
    """Run `code` in a fresh Python; it sets `result`; return it with wall time and peak RSS.

    `code` sees `args` (JSON round-tripped) and the repository on `sys.path`.
    """
    script = (
        "import json, resource, sys, time\n"
        f"{_PEAK_RSS}\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"args = json.loads({json.dumps(json.dumps(args))})\n"
        "started = time.perf_counter()\n"
        f"{code}\n"
        "result['seconds'] = time.perf_counter() - started\n"
        "result['peak_rss'] = _peak_rss()\n"
        "print('RESULT ' + json.dumps(result))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False,
        env={"LAKEVER_PROGRESS": "0", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line.removeprefix("RESULT ")))


RESULTS = Path(__file__).with_name("results")


def median_time(
    fn: Callable[[], Any], *, repeat: int, setup: Callable[[], Any] | None = None
) -> float:
    """Median wall time of `fn` over `repeat` runs (setup untimed)."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def tree_bytes(path: str | Path) -> int:
    """Total size of the files below a folder."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.path.getsize(os.path.join(root, f))
    return total


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def build_dataset(
    root: Path, name: str, n_labels: int
) -> tuple[lv.Dataset, pl.DataFrame, pl.DataFrame]:
    """A sample dataset of about `n_labels` labels (10 per frame), committed in one transaction."""
    n_frames = max(1, n_labels // 10)
    frames = sample.sample_frames(n_frames)
    labels = sample.sample_labels(frames)
    ds = lv.connect(root).create_dataset(name, classes=sample.CLASSES)
    with ds.transaction(message="bulk import") as tx:
        tx.add_frames(frames)
        tx.upsert_labels(labels)
    return ds, frames, labels


def stream_batch(
    tag: str, i: int, frame_ids: Sequence[str], n: int, *, classes: Sequence[str] = ("car",)
) -> pl.DataFrame:
    """The i-th small batch of a labeling stream: n new labels spread over the frames."""
    return pl.DataFrame(
        {
            "label_id": [f"{tag}{i:05d}-{k:03d}" for k in range(n)],
            "frame_id": [frame_ids[(i * n + k) % len(frame_ids)] for k in range(n)],
            "cls": [classes[k % len(classes)] for k in range(n)],
            "x": 1.0,
            "y": 2.0,
            "w": 3.0,
            "h": 4.0,
        }
    )


def version_bytes(uri: str, before: int, after: int) -> tuple[int, int]:
    """(bytes of data files added between two versions, bytes of the table at `before`)."""
    a = pl.DataFrame(_delta.table_at(Location(uri), before).get_add_actions(flatten=True))
    b = pl.DataFrame(_delta.table_at(Location(uri), after).get_add_actions(flatten=True))
    new = b.filter(~pl.col("path").is_in(a["path"].implode()))
    return int(new["size_bytes"].sum()), int(a["size_bytes"].sum())


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_b(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def markdown(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()
) -> str:
    lines = [f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def save(name: str, sections: Sequence[str], header: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(header + "\n" + "\n".join(sections))
    return path
