"""Crash safety and concurrency, with real writer processes killed or racing."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake

import lakever as lv
from lakever import _delta
from tests.helpers import CLASSES, content_hash, frames, table_hash

WORKER = str(Path(__file__).with_name("_worker.py"))


def spawn(
    mode: str, uri: str, name: str, writer: str, count: int, options: dict[str, str], **env: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKER, mode, uri, name, writer, str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LAKEVER_TEST_OPTIONS": json.dumps(options), **env},
    )


def wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "READY", (line, proc.stderr.read() if proc.stderr else "")


def finish(
    procs: list[subprocess.Popen[str]], timeout: float = 900, *, ready: bool = False
) -> list[str]:
    """Wait for every worker to exit 0 (first for its READY unless `ready`); their outputs."""
    for p in procs:
        if not ready:
            wait_ready(p)
    outs = []
    for p in procs:
        # read through the same buffered stream as wait_ready: communicate() reads the
        # raw pipe and would lose lines that arrived with READY
        assert p.stdout is not None and p.stderr is not None
        errs: list[str] = []
        drain = threading.Thread(target=lambda p=p, errs=errs: errs.append(p.stderr.read()))
        drain.start()
        out = p.stdout.read()
        drain.join(timeout)
        assert p.wait(timeout) == 0, "".join(errs)[-3000:]
        outs.append(out)
    return outs


def base_dataset(lake: lv.Lake) -> lv.Dataset:
    ds = lake.create_dataset("shared", classes=CLASSES)
    ds.add_frames(frames(["shared-00000"]))
    return ds


def check_consistent(view: lv.View | lv.Dataset) -> None:
    """What every complete commit of the worker guarantees, across tables."""
    f = set(view.read("frames")["frame_id"])
    lab = view.read("labels")
    assert set(lab["frame_id"]) <= f
    worker_frames = {x for x in f if not x.startswith(("shared", "p"))}
    assert len(worker_frames) % 3 == 0
    assert lab.filter(pl.col("frame_id").is_in(list(worker_frames))).height == 2 * len(
        worker_frames
    )
    if "inferences/model" in view.tables:
        assert view.read("inferences/model").height == len(worker_frames)


@pytest.mark.slow
def test_sigkill_at_random_points_never_breaks_the_dataset(local_lake: lv.Lake) -> None:
    ds = base_dataset(local_lake)
    ds.create_snapshot("base")
    hashes = {"base": content_hash(ds.at("base"))}
    rng = random.Random(7)
    published_by_parent: list[str] = []
    orphans_seen = 0
    for it in range(50):
        # every commit pauses 30 ms between its table writes and its publish,
        # so a good share of the kills leave orphans behind
        proc = spawn(
            "crash",
            local_lake.uri,
            "shared",
            f"w{it:02d}",
            1000,
            {},
            LAKEVER_TEST_PAUSE_BEFORE_PUBLISH="0.03",
        )
        wait_ready(proc)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        acks = [int(line.split()[1]) for line in out.splitlines() if line.startswith("ACK")]
        head_before = ds.head
        if acks:
            assert head_before.seq in (acks[-1], acks[-1] + 1)
        check_consistent(ds)
        for snap in ds.list_snapshots():
            h = content_hash(ds.at(snap.name))
            assert hashes.setdefault(snap.name, h) == h, snap.name
        # the next commit succeeds and publishes none of the killed writer's orphans
        orphans_seen += any(
            DeltaTable(ds.delta_table(t)[0]).version() > v
            for t, v in head_before.table_versions.items()
        )
        before = {t: ds.read(t) for t in ds.tables}
        c = ds.add_frames(frames([f"p{it:05d}"]), message="after crash")
        assert c.seq == head_before.seq + 1
        published_by_parent.append(f"p{it:05d}")
        after = ds.read("frames")
        assert sorted(after["frame_id"]) == sorted([*before["frames"]["frame_id"], f"p{it:05d}"])
        for t in ds.tables:
            if t != "frames":
                assert content_hash(ds)[t] == table_hash(before[t])
        check_consistent(ds)
    assert orphans_seen >= 5  # the kills really landed between table writes and publish
    assert set(published_by_parent) <= set(ds.read("frames")["frame_id"])
    assert [c.seq for c in ds.log()] == list(range(ds.head.seq, -1, -1))


def run_writers(
    lake: lv.Lake, options: dict[str, str], writers: int, commits: int
) -> dict[str, list[tuple[int, str]]]:
    procs = {
        f"w{w}": spawn("concurrent", lake.uri, "shared", f"w{w}", commits, options)
        for w in range(writers)
    }
    acked: dict[str, list[tuple[int, str]]] = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, err[-3000:]
        acked[name] = [
            (int(line.split()[1]), line.split()[2])
            for line in out.splitlines()
            if line.startswith("ACK")
        ]
    return acked


@pytest.mark.slow
def test_four_writers_lose_nothing(
    lake: lv.Lake, lake_uri: tuple[str, dict[str, str]], backend: str
) -> None:
    _, options = lake_uri
    # moto answers one request at a time; fewer commits keep the S3 run in minutes
    commits = 25 if backend == "local" else 6
    ds = base_dataset(lake)
    acked = run_writers(lake, options, writers=4, commits=commits)
    log = ds.log()
    last = 1 + 4 * commits
    assert [c.seq for c in log] == list(range(last, -1, -1))  # unique and gap-free
    by_seq = {c.seq: c.id for c in log}
    for name, acks in acked.items():
        assert len(acks) == commits
        for seq, cid in acks:
            assert by_seq[seq] == cid, (name, seq)
    got = set(ds.read("frames")["frame_id"])
    expected = {f"w{w}-{i:04d}-{k}" for w in range(4) for i in range(commits) for k in range(3)}
    assert got == expected | {"shared-00000"}
    lab = ds.read("labels")
    assert lab.height == 2 * len(expected)
    # each writer relabeled its previous commit's labels (merge-on-read edits)
    last_frames = {f"w{w}-{commits - 1:04d}-{k}" for w in range(4) for k in range(3)}
    relabeled = lab.filter(~pl.col("frame_id").is_in(list(last_frames)))
    assert set(relabeled["cls"]) == {"person"}
    assert set(lab.filter(pl.col("frame_id").is_in(list(last_frames)))["cls"]) == {"car"}
    # every commit's recorded versions hold exactly what it had acknowledged so far
    for c in log[::7]:
        check_consistent(ds.at(c.seq))


@pytest.mark.slow
def test_snapshot_name_race_has_one_winner(
    lake: lv.Lake, lake_uri: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    _, options = lake_uri
    ds = base_dataset(lake)
    for round_ in range(3):
        go = tmp_path / f"go-{round_}"
        name = f"race-{round_}"
        procs = [
            spawn("snapshot-race", lake.uri, "shared", name, 0, options, LAKEVER_TEST_GO=str(go))
            for _ in range(2)
        ]
        for p in procs:
            wait_ready(p)
        go.touch()
        codes = sorted(p.wait(timeout=300) for p in procs)
        assert codes == [0, 3], [p.stderr.read() if p.stderr else "" for p in procs]
        assert [s.name for s in ds.list_snapshots()].count(name) == 1


def test_orphan_versions_are_never_published(lake: lv.Lake) -> None:
    ds = lake.create_dataset("orph", classes=CLASSES)
    ds.add_frames(frames(range(3)))
    head = ds.head
    uri, version = ds.delta_table("frames")
    opts = ds.root.delta_options()
    # a crashed writer's claim: a dead process on this host aimed at the next seq
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    claim = {
        "lakever.seq": str(head.seq + 1),
        "lakever.writer": f"{socket.gethostname()}:{dead.stdout.strip()}:x",
    }
    write_deltalake(
        uri,
        frames(["orphan-1"]).to_arrow(),
        mode="append",
        storage_options=opts,
        schema_mode="merge",
        commit_properties=CommitProperties(custom_metadata=claim),
    )
    # and a write from outside lakever
    write_deltalake(
        uri,
        frames(["outsider"]).to_arrow(),
        mode="append",
        storage_options=opts,
        schema_mode="merge",
    )
    assert ds.head == head
    assert sorted(ds.read("frames")["frame_id"]) == ["f00000", "f00001", "f00002"]
    c = ds.add_frames(frames(["f00009"]))
    assert c.seq == head.seq + 1
    assert sorted(ds.read("frames")["frame_id"]) == ["f00000", "f00001", "f00002", "f00009"]
    assert c.table_versions["frames"] > version + 2


def test_live_claim_makes_writer_wait_then_conflict(
    local_lake: lv.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = local_lake.create_dataset("busy", classes=CLASSES)
    head = ds.head
    uri, _ = ds.delta_table("frames")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claim = {
            "lakever.seq": str(head.seq + 1),
            "lakever.writer": f"{socket.gethostname()}:{sleeper.pid}:live",
        }
        write_deltalake(
            uri,
            frames(["in-flight"]).to_arrow(),
            mode="append",
            schema_mode="merge",
            commit_properties=CommitProperties(custom_metadata=claim),
        )
        monkeypatch.setenv("LAKEVER_COMMIT_TIMEOUT", "1")
        with pytest.raises(lv.ConflictError, match="being written by"):
            ds.add_frames(frames(["mine"]))
        assert ds.head == head
    finally:
        sleeper.kill()
        sleeper.wait()
    ds.add_frames(frames(["mine"]))
    assert sorted(ds.read("frames")["frame_id"]) == ["mine"]


@pytest.mark.slow
def test_readers_never_see_half_a_commit(
    lake: lv.Lake, lake_uri: tuple[str, dict[str, str]]
) -> None:
    """A reader polling HEAD while transactions span frames, labels and an inference set."""
    _, options = lake_uri
    ds = base_dataset(lake)
    writer = spawn("crash", lake.uri, "shared", "rw", 12, options)
    wait_ready(writer)
    seen: set[int] = set()
    while writer.poll() is None:
        view = ds.at("HEAD")
        check_consistent(view)  # all three tables from one commit, or it fails
        seen.add(view.commit.seq)
    _out, err = writer.communicate()
    assert writer.returncode == 0, err[-2000:]
    check_consistent(ds)
    assert len(seen) >= 3  # the reader really watched commits land


def vectors(ds: lv.Dataset) -> int:
    """Files carrying a deletion vector at HEAD, over every table."""
    from lakever import _deltalog

    return sum(
        len(_deltalog.files_at(ds.table_location(t), v).masked())
        for t, v in ds.head.table_versions.items()
    )


def dataset_with_vectors(lake: lv.Lake, monkeypatch: pytest.MonkeyPatch) -> lv.Dataset:
    """The shared dataset over a 5,000-frame base, one frame edited: a vector in frames.

    The target file size is then set to 1.5x the base file, so that file counts
    as large and the writers' files as small: compaction leaves the base file
    (and its vector) to `optimize`.
    """
    from lakever import _deltalog

    ds = base_dataset(lake)
    commit = ds.add_frames(frames([f"shared-b{i:04d}" for i in range(5000)]))  # one file
    loc = ds.table_location("frames")
    files = _deltalog.files_at(loc, commit.table_versions["frames"]).adds.values()
    monkeypatch.setattr(_delta, "TARGET_FILE_SIZE", int(max(int(a["size"]) for a in files) * 1.5))
    ds.update_frames([{"frame_id": "shared-b0007", "width": 7}])
    assert vectors(ds) == 1
    return ds


@pytest.mark.slow
def test_optimize_racing_writers_loses_nothing(
    lake: lv.Lake,
    lake_uri: tuple[str, dict[str, str]],
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, options = lake_uri
    commits, runs = (12, 6) if backend == "local" else (5, 3)
    ds = dataset_with_vectors(lake, monkeypatch)
    monkeypatch.setenv("LAKEVER_TEST_TARGET_FILE_SIZE", str(_delta.TARGET_FILE_SIZE))
    procs = [spawn("concurrent", lake.uri, "shared", f"w{w}", commits, options) for w in range(2)]
    procs.append(
        spawn(
            "optimize-loop",
            lake.uri,
            "shared",
            "opt",
            runs,
            options,
            LAKEVER_TEST_OPTIMIZE_PAUSE="0.3" if backend == "local" else "1.0",
        )
    )
    outs = finish(procs)
    log = {c.seq: c for c in ds.log()}
    assert sorted(log) == list(range(ds.head.seq + 1))  # unique and gap-free
    for out in outs[:2]:
        acks = [line.split()[1:] for line in out.splitlines() if line.startswith("ACK")]
        assert len(acks) == commits
        assert all(log[int(seq)].id == cid for seq, cid in acks)
    opts = [line.split()[2:] for line in outs[2].splitlines() if line.startswith("OPT")]
    assert len(opts) == runs
    optimized = {int(seq) for seq, cid, op in opts if op == "optimize"}
    assert optimized  # at least one run found vectors or small files to rewrite
    assert all(log[int(seq)].id == cid for seq, cid, _ in opts)
    for seq in optimized:  # an optimize commit changes no row of any table
        assert content_hash(ds.at(seq)) == content_hash(ds.at(seq - 1)), seq
    expected = {f"w{w}-{i:04d}-{k}" for w in range(2) for i in range(commits) for k in range(3)}
    f = set(ds.read("frames")["frame_id"])
    assert expected <= f and len(f) == len(expected) + 5001
    check_consistent(ds)
    hashes = content_hash(ds)
    ds.optimize()
    assert vectors(ds) == 0 and content_hash(ds) == hashes


@pytest.mark.slow
def test_sigkill_during_optimize_never_breaks_the_dataset(
    local_lake: lv.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = dataset_with_vectors(local_lake, monkeypatch)
    monkeypatch.setenv("LAKEVER_TEST_TARGET_FILE_SIZE", str(_delta.TARGET_FILE_SIZE))
    ds.create_snapshot("base")
    want = {"base": content_hash(ds.at("base"))}
    rng = random.Random(11)
    landed = 0
    for it in range(8):
        ds.update_frames([{"frame_id": f"shared-b{rng.randrange(5000):04d}", "width": 100 + it}])
        want["HEAD"] = content_hash(ds)
        head = ds.head
        proc = spawn(
            "optimize-loop",
            local_lake.uri,
            "shared",
            f"opt{it}",
            1,
            {},
            LAKEVER_TEST_PAUSE_BEFORE_PUBLISH="0.2",
            LAKEVER_TEST_OPTIMIZE_PAUSE="0",
        )
        wait_ready(proc)
        time.sleep(rng.uniform(0.0, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        landed += ds.head.seq > head.seq
        assert ds.head.seq in (head.seq, head.seq + 1)
        assert {"base": content_hash(ds.at("base")), "HEAD": content_hash(ds)} == want
        c = ds.add_frames(frames([f"p{it:05d}"]))  # the next writer is not blocked
        assert c.seq == ds.head.seq and set(ds.read("frames")["frame_id"]) >= {f"p{it:05d}"}
        want["HEAD"] = content_hash(ds)
    ds.optimize()
    assert vectors(ds) == 0 and content_hash(ds) == want["HEAD"]
    assert [c.seq for c in ds.log()] == list(range(ds.head.seq, -1, -1))
    print(f"{landed} of 8 killed optimize runs had published")


@pytest.mark.slow
def test_writers_on_different_branches_lose_nothing(
    lake: lv.Lake, lake_uri: tuple[str, dict[str, str]], backend: str
) -> None:
    _, options = lake_uri
    commits = 6 if backend == "local" else 2
    ds = base_dataset(lake)
    ds.create_branch("a")
    ds.create_branch("b")
    procs = {
        br: spawn("concurrent", lake.uri, "shared", f"w{br}", commits, options,
                  LAKEVER_TEST_BRANCH=br)
        for br in ("a", "b", "main")
    }  # fmt: skip
    acked = {}
    for br, proc in procs.items():
        out, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, err[-3000:]
        acked[br] = [int(line.split()[1]) for line in out.splitlines() if line.startswith("ACK")]
        assert len(acked[br]) == commits
    every = [s for acks in acked.values() for s in acks]
    assert len(set(every)) == len(every)  # one seq per commit, whatever the branch
    for br, acks in acked.items():
        handle = ds.on_branch(br)
        mine = {c.seq for c in handle.log()}
        assert set(acks) <= mine
        assert not (set(every) - set(acks)) & mine  # no other branch's commit
        want = {f"w{br}-{i:04d}-{k}" for i in range(commits) for k in range(3)}
        assert set(handle.read("frames")["frame_id"]) == want | {"shared-00000"}
        check_consistent(handle)
    if backend != "local":
        return  # the race of a merge with a commit is the protocol's, checked on local disk
    # a merge racing commits on its target includes them or retries, never drops them
    merger = spawn("merge-loop", lake.uri, "shared", "a", 3, options)
    writer = spawn("concurrent", lake.uri, "shared", "wm2", commits, options)
    for proc in (merger, writer):
        out, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, err[-3000:]
    main = set(ds.read("frames")["frame_id"])
    assert {f"wm2-{i:04d}-{k}" for i in range(commits) for k in range(3)} <= main
    assert {f"wa-{i:04d}-{k}" for i in range(commits) for k in range(3)} <= main
    check_consistent(ds)


@pytest.mark.slow
def test_sigkill_during_branch_commits_and_merges_keeps_every_head_readable(
    local_lake: lv.Lake,
) -> None:
    ds = base_dataset(local_lake)
    for br in ("a", "b"):
        ds.create_branch(br)
    rng = random.Random(11)
    for it in range(9):
        branch = ("a", "b", "main")[it % 3]
        mode = "merge-loop" if it % 4 == 3 else "crash"
        writer = "b" if mode == "merge-loop" else f"k{it:02d}"
        count = 1000 if mode == "crash" else 5
        proc = spawn(
            mode,
            local_lake.uri,
            "shared",
            writer,
            count,
            {},
            LAKEVER_TEST_BRANCH=branch,
            LAKEVER_TEST_PAUSE_BEFORE_PUBLISH="0.03",
        )
        wait_ready(proc)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        for b in ds.branches():
            handle = ds.on_branch(b.name)
            check_consistent(handle)
            c = handle.add_frames(frames([f"p{it:02d}-{b.name}"]), message="after crash")
            assert c.branch == b.name
            assert f"p{it:02d}-{b.name}" in set(handle.read("frames")["frame_id"])
    assert [c.seq for c in ds.log()][-1] == 0
