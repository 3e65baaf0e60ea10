"""Run lakever's benchmarks and write a readable table to benchmarks/results/.

python benchmarks/run.py                 # full sizes (10M labels; needs ~10 GiB RAM, ~15 min)
python benchmarks/run.py --quick         # small sizes, a smoke run
python benchmarks/run.py --only core   # or --only diff, --only edits (1M and 5M labels),
                                       # --only branches (1M and 5M labels, with Lance),
                                       # --only engines (one-call reads of a 5M-label
                                       #   snapshot after 100 edits, every engine)
                                       # --only writes (adopting 1,000 staged files; Sail
                                       #   writing 5M labels through lakever)
                                       # --only clone (clones at 1M and 5M labels, local
                                       #   and S3; merging two 1M-label datasets),
                                       # --only ingest (streaming 1M labels, COCO 1M boxes),
                                       # --only review (evaluation vs pycocotools, segments)
                                       # --only lifecycle (GC after 100 edits at 5M labels,
                                       #   GC of 10k files local and S3, archiving)
                                       # --only scale (import, edit, diff, read at 1M, 5M,
                                       #   20M and 50M labels; ~25 min, ~12 GiB RAM)
python benchmarks/run.py --only scale --scale-sizes 5 --target-mib 16
                                       # one size (millions of labels), one data file size
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import deltalake
import polars as pl

import lakever
from benchmarks import (
    bench_branches,
    bench_clone,
    bench_core,
    bench_diff,
    bench_edits,
    bench_engines,
    bench_ingest,
    bench_lifecycle,
    bench_review,
    bench_scale,
    bench_writes,
)
from benchmarks._common import save


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument(
        "--only",
        choices=[
            "core",
            "diff",
            "edits",
            "ingest",
            "review",
            "lifecycle",
            "branches",
            "clone",
            "engines",
            "writes",
            "scale",
        ],
        action="append",
        help="run only these suites",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)"
    )
    parser.add_argument(
        "--scale-sizes",
        default="1,5,20,50",
        help="scale suite: sizes in millions of labels, comma-separated",
    )
    parser.add_argument(
        "--target-mib", type=int, default=None, help="scale suite: lakever's data file size"
    )
    args = parser.parse_args()
    suites = args.only or ["core", "diff", "edits", "ingest", "review", "lifecycle"]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lakever-bench-"))
    header = (
        f"# lakever benchmarks ({'quick' if args.quick else 'full'})\n\n"
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; lakever {lakever.__version__}, "
        f"deltalake {deltalake.__version__}, polars {pl.__version__}, Python "
        f"{platform.python_version()}, {platform.machine()}; local disk.\n"
    )
    started = time.perf_counter()
    for suite in suites:
        if suite == "core":
            sizes = [20_000, 100_000] if args.quick else [100_000, 1_000_000, 10_000_000]
            sections = bench_core.run(
                work,
                sizes=sizes,
                repeat=10 if args.quick else 20,
                commits=100 if args.quick else 1000,
            )
        elif suite == "ingest":
            sections = bench_ingest.run(
                work,
                n_frames=4_000 if args.quick else 200_000,
                n_images=5_000 if args.quick else 100_000,
            )
        elif suite == "review":
            sections = bench_review.run(
                work,
                sizes=[500, 2_000] if args.quick else [10_000, 100_000],
                n_labels=50_000 if args.quick else 5_000_000,
                elements=1_000 if args.quick else 10_000,
                commits=10 if args.quick else 100,
            )
        elif suite == "lifecycle":
            sections = bench_lifecycle.run(
                work,
                n_labels=100_000 if args.quick else 5_000_000,
                edits=20 if args.quick else 100,
                n_files=1_000 if args.quick else 10_000,
                s3=True,
            )
        elif suite == "branches":
            sizes = [100_000] if args.quick else [1_000_000, 5_000_000]
            sections = bench_branches.run(work, sizes=sizes)
        elif suite == "clone":
            sections = bench_clone.run(
                work,
                sizes=[100_000] if args.quick else [1_000_000, 5_000_000],
                s3_labels=100_000 if args.quick else 1_000_000,
                merge_labels=100_000 if args.quick else 1_000_000,
            )
        elif suite == "writes":
            sections = bench_writes.run(
                work,
                n_labels=100_000 if args.quick else 1_000_000,
                n_files=100 if args.quick else 1_000,
                spark_labels=100_000 if args.quick else 5_000_000,
            )
        elif suite == "engines":
            sections = bench_engines.run(
                work, n_labels=100_000 if args.quick else 5_000_000, edits=10 if args.quick else 100
            )
        elif suite == "scale":
            sizes = (
                [200_000, 500_000]
                if args.quick
                else [int(float(x) * 1_000_000) for x in args.scale_sizes.split(",")]
            )
            sections = bench_scale.run(
                work,
                sizes=sizes,
                target_mib=args.target_mib,
                spark_labels=max(sizes) if args.target_mib is None else 0,
            )
        elif suite == "edits":
            sizes = [100_000] if args.quick else [1_000_000, 5_000_000]
            sections = bench_edits.run(work, sizes=sizes, many=30 if args.quick else 100)
        else:
            sizes = [20_000, 100_000] if args.quick else [1_000_000, 10_000_000]
            changes = (100, 1_000, 10_000) if args.quick else bench_diff.CHANGES
            sections = bench_diff.run(
                work,
                sizes=sizes,
                changes=changes,
                repeat=3,
                status_commits=20 if args.quick else 100,
                history_commits=100 if args.quick else 1000,
            )
        name = f"{suite}-quick" if args.quick else suite
        if suite == "scale" and (args.target_mib or args.scale_sizes != "1,5,20,50"):
            name += f"-{args.scale_sizes.replace(',', '_')}m-{args.target_mib or 'default'}mib"
        path = save(name, sections, header)
        print(f"wrote {path} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
