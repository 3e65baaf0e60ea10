"""A writer process for crash and concurrency tests (run as a script, not collected).

Usage: python tests/_worker.py MODE URI DATASET WRITER COUNT
Storage options come as JSON in $LAKEVER_TEST_OPTIONS. Prints READY once
imported and `ACK <seq> <commit id>` after each acknowledged commit.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl

import lakever as lv
from tests.helpers import frames, labels


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main() -> int:
    mode, uri, name, writer, count = sys.argv[1:6]
    options = json.loads(os.environ.get("LAKEVER_TEST_OPTIONS", "{}"))
    ds = lv.connect(uri, storage_options=options).dataset(name)
    say("READY")
    if mode == "snapshot-race":
        go = Path(os.environ["LAKEVER_TEST_GO"])
        while not go.exists():
            time.sleep(0.001)
        try:
            ds.create_snapshot(writer)
        except lv.SnapshotExistsError:
            say("LOST")
            return 3
        say("WON")
        return 0
    for i in range(int(count)):
        fids = [f"{writer}-{i:04d}-{k}" for k in range(3)]
        with ds.transaction(message=f"{writer} commit {i}", author=writer) as tx:
            tx.add_frames(frames(fids))
            tx.upsert_labels(labels(fids, per_frame=2))
            if mode == "crash":
                tx.upsert_inferences(
                    "model", labels(fids, per_frame=1).with_columns(confidence=pl.lit(0.5))
                )
            if i % 4 == 3:
                tx.update_frames([{"frame_id": "shared-00000", "width": 100 + i}])
        assert tx.result is not None
        say(f"ACK {tx.result.seq} {tx.result.id}")
        if mode == "crash" and i % 7 == 6:
            ds.create_snapshot(f"{writer}-snap-{i}")
            say(f"SNAP {writer}-snap-{i}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
