"""Branches inside one set of Delta tables: isolation, diffs, three-way merges, drafts."""

from __future__ import annotations

import polars as pl
import pytest

import lakever as lv
from tests.helpers import CLASSES, frames, labels, table_hash

FIDS = [f"f{i:05d}" for i in range(20)]


@pytest.fixture
def ds(local_lake: lv.Lake) -> lv.Dataset:
    return _street(local_lake)


def _street(lake: lv.Lake) -> lv.Dataset:
    ds = lake.create_dataset("street", classes=CLASSES)
    ds.add_frames(frames(FIDS))
    ds.upsert_labels(labels(FIDS, per_frame=2))
    ds.create_snapshot("v1")
    return ds


def _labels(view: lv.Dataset | lv.View) -> dict[str, tuple]:
    rows = view.read("labels").select("label_id", "cls", "x", "w")
    return {r[0]: r[1:] for r in rows.iter_rows()}


def test_a_branch_copies_nothing_and_is_isolated(lake: lv.Lake) -> None:
    ds = _street(lake)
    before = {t: table_hash(ds.read(t)) for t in ("frames", "labels")}
    versions = dict(ds.head.table_versions)
    qa = ds.create_branch("qa", at="v1")
    assert qa.branch_name == "qa" and qa.head.table_versions == versions
    assert lake.dataset("street", branch="qa").head.id == qa.head.id
    qa.upsert_labels(labels(FIDS[:3], per_frame=1, cls="person"))
    qa.delete_labels([f"{FIDS[5]}-l1"])
    # main is untouched: head, reads, log
    assert {t: table_hash(ds.read(t)) for t in ("frames", "labels")} == before
    assert ds.head.table_versions == versions
    assert all(c.branch == "main" for c in ds.log())
    got = _labels(qa)
    assert got[f"{FIDS[0]}-l0"][0] == "person" and f"{FIDS[5]}-l1" not in got
    assert _labels(ds)[f"{FIDS[0]}-l0"][0] == "car"
    # main moves on; the branch does not see it
    ds.upsert_labels(labels(FIDS[10:12], per_frame=1, cls="truck"))
    assert _labels(qa)[f"{FIDS[10]}-l0"][0] == "car"
    assert _labels(ds)[f"{FIDS[10]}-l0"][0] == "truck"
    # a branch name is a ref, from any handle
    assert ds.at("qa").commit.id == qa.head.id
    assert [b.name for b in ds.branches()] == ["main", "qa"]
    log = qa.log()
    assert log[0].branch == "qa" and {c.seq for c in log} >= {0, 1, 2}
    assert ds.head.seq not in {c.seq for c in log}


def test_diffs_between_branches_equal_the_full_comparison(ds: lv.Dataset) -> None:
    qa = ds.create_branch("qa")
    qa.upsert_labels(labels(FIDS[:4], per_frame=1, cls="person"))
    ds.upsert_labels(labels(FIDS[4:6], per_frame=1, cls="truck"))
    qa.delete_labels([f"{FIDS[7]}-l1"])
    ds.upsert_labels(labels(FIDS[8:9], per_frame=3, cls="bike"))
    d = ds.diff("main", "qa").rows("labels")
    a, b = _labels(ds), _labels(qa)
    want_added = sorted(set(b) - set(a))
    want_deleted = sorted(set(a) - set(b))
    want_modified = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    got = {
        c: sorted(d.filter(pl.col("change") == c)["label_id"])
        for c in ("added", "deleted", "modified")
    }
    assert got == {"added": want_added, "deleted": want_deleted, "modified": want_modified}


def test_merge_fast_forward(ds: lv.Dataset) -> None:
    qa = ds.create_branch("qa")
    qa.upsert_labels(labels(FIDS[:2], per_frame=1, cls="person"))
    result = ds.merge("qa")
    assert result.fast_forward and result.commit is not None
    assert result.commit.parents == (result.commit.parents[0], qa.head.id)
    assert _labels(ds) == _labels(qa)
    assert result.counts["labels"].modified == 2
    assert ds.merge("qa").commit is None  # already merged


def test_merge_without_conflicts_takes_both_sides(lake: lv.Lake) -> None:
    ds = _street(lake)
    qa = ds.create_branch("qa")
    qa.upsert_labels(labels(FIDS[:2], per_frame=1, cls="person"))
    qa.delete_labels([f"{FIDS[3]}-l1"])
    ds.upsert_labels(labels(FIDS[10:12], per_frame=1, cls="truck"))
    preview = ds.merge("qa", dry_run=True)
    assert preview.commit is None and preview.conflicts.is_empty()
    head = ds.head.seq
    assert ds.head.seq == head
    result = ds.merge("qa")
    assert not result.fast_forward and result.conflicts.is_empty()
    assert len(result.commit.parents) == 2
    got = _labels(ds)
    assert got[f"{FIDS[0]}-l0"][0] == "person" and got[f"{FIDS[10]}-l0"][0] == "truck"
    assert f"{FIDS[3]}-l1" not in got
    assert result.counts["labels"] == preview.counts["labels"]
    assert ds.merge_base("qa").id == qa.head.id


def test_cell_merge_and_conflicts(ds: lv.Dataset) -> None:
    qa = ds.create_branch("qa")
    base = ds.read("labels").filter(pl.col("label_id").is_in([f"{FIDS[0]}-l0", f"{FIDS[1]}-l0"]))
    qa.upsert_labels(base.with_columns(cls=pl.lit("person")))  # theirs: class
    ds.upsert_labels(base.head(1).with_columns(w=pl.lit(99.0)))  # ours: width of one
    ds.upsert_labels(base.tail(1).with_columns(cls=pl.lit("bike")))  # ours: class of other
    with pytest.raises(lv.MergeConflictError) as err:
        ds.merge("qa")
    conflicts = err.value.conflicts
    assert conflicts.select("table", "key", "column", "kind").rows() == [
        ("labels", f"{FIDS[1]}-l0", "cls", "cell")
    ]
    assert conflicts.row(0, named=True)["theirs"] == '"person"'
    assert conflicts.row(0, named=True)["ours"] == '"bike"'
    row_mode = ds.merge("qa", granularity="row", dry_run=True)
    assert sorted(row_mode.conflicts["key"]) == [f"{FIDS[0]}-l0", f"{FIDS[1]}-l0"]
    result = ds.merge("qa", on_conflict="theirs")
    got = _labels(ds)
    assert got[f"{FIDS[0]}-l0"] == ("person", 10.0, 99.0)  # both sides' cells
    assert got[f"{FIDS[1]}-l0"][0] == "person"  # the conflict went to theirs
    assert result.commit.meta["merge"]["resolved"] == ["theirs"]
    assert result.conflicts.height == 1


def test_delete_modify_and_integrity_conflicts(ds: lv.Dataset) -> None:
    qa = ds.create_branch("qa")
    qa.delete_labels([f"{FIDS[0]}-l0"])
    ds.upsert_labels(labels(FIDS[:1], per_frame=1, cls="bike"))
    qa.delete_labels([f"{FIDS[2]}-l0", f"{FIDS[2]}-l1"])
    qa.delete_frames([FIDS[2]])
    ds.upsert_labels(labels(FIDS[2:3], per_frame=1, start=5))  # ours: a label on that frame
    preview = ds.merge("qa", dry_run=True, on_conflict="ours")
    kinds = sorted(zip(preview.conflicts["key"], preview.conflicts["kind"], strict=True))
    assert kinds == [(f"{FIDS[0]}-l0", "delete_modify"), (f"{FIDS[2]}-l5", "missing_frame")]
    with pytest.raises(lv.MergeConflictError, match="missing_frame"):
        ds.merge("qa", on_conflict="ours")
    assert ds.head.operation == "write"


def test_drafts_publish_and_names(ds: lv.Dataset) -> None:
    with pytest.raises(lv.InvalidNameError, match="namespace"):
        ds.create_branch("v1")
    draft = ds.create_branch("v2-draft")
    with pytest.raises(lv.InvalidNameError, match="namespace"):
        ds.create_snapshot("v2-draft")
    with pytest.raises(lv.InvalidNameError, match="already has a branch"):
        ds.create_branch("v2-draft")
    draft.upsert_labels(labels(FIDS[:1], per_frame=1, cls="person"))
    snap = draft.publish("v2", description="QA done")
    assert snap.commit_id == draft.head.id
    assert {b.name: b.state for b in ds.branches()}["v2-draft"] == "published"
    with pytest.raises(lv.ReadOnlyError, match="published"):
        draft.upsert_labels(labels(FIDS[:1], per_frame=1, cls="bike"))
    child = ds.create_branch("v3-draft", at="v2")
    assert _labels(child)[f"{FIDS[0]}-l0"][0] == "person"
    with pytest.raises(lv.InvalidNameError, match="main"):
        ds.delete_branch("main")
    with pytest.raises(lv.InvalidInputError, match="itself"):
        ds.merge("main")
    with pytest.raises(lv.InvalidInputError, match="on_conflict"):
        ds.merge("v2-draft", on_conflict="mine")
    with pytest.raises(lv.BranchNotFoundError, match="nope"):
        ds.delete_branch("nope")
    with pytest.raises(lv.BranchNotFoundError):
        ds.on_branch("nope")
    ds.delete_branch("v3-draft")
    assert [b.name for b in ds.branches()] == ["main", "v2-draft"]
    with pytest.raises(lv.BranchNotFoundError):
        child.upsert_labels(labels(FIDS[:1], per_frame=1))
    assert ds.at("v2").read("labels").height == 40


def test_create_branch_from_several_versions(ds: lv.Dataset) -> None:
    a = ds.create_branch("a")
    a.upsert_labels(labels(FIDS[:1], per_frame=1, cls="person"))
    b = ds.create_branch("b")
    b.upsert_labels(labels(FIDS[5:6], per_frame=1, cls="bike"))
    both = ds.create_branch("both", at=["a", "b"])
    got = _labels(both)
    assert got[f"{FIDS[0]}-l0"][0] == "person" and got[f"{FIDS[5]}-l0"][0] == "bike"


def test_history_on_a_branch_follows_its_line(ds: lv.Dataset) -> None:
    qa = ds.create_branch("qa")
    key = f"{FIDS[0]}-l0"
    qa.upsert_labels(labels(FIDS[:1], per_frame=1, cls="person"))
    ds.upsert_labels(labels(FIDS[:1], per_frame=1, cls="bike"))
    h_main = ds.history(label_id=key)
    h_qa = qa.history(label_id=key)
    assert (
        h_main["after"].str.contains("bike").any()
        and not h_main["after"].str.contains("person").any()
    )
    assert (
        h_qa["after"].str.contains("person").any() and not h_qa["after"].str.contains("bike").any()
    )


def test_gc_keeps_open_branch_heads_and_reclaims_deleted_ones(ds: lv.Dataset) -> None:
    from datetime import timedelta

    qa = ds.create_branch("qa")
    for i in range(3):
        qa.upsert_labels(labels(FIDS[i : i + 1], per_frame=1, cls="person"))
    want = table_hash(qa.read("labels"))
    for i in range(3):
        ds.upsert_labels(labels(FIDS[10 + i : 11 + i], per_frame=1, cls="truck"))
    main_want = table_hash(ds.read("labels"))
    plan = ds.gc(keep_within=timedelta(0))
    assert {"head", "branch"} <= set(plan.roots["reason"])
    assert "qa" in plan.roots.filter(pl.col("reason") == "branch")["name"].to_list()
    ds.gc(keep_within=timedelta(0), apply=True)
    assert table_hash(qa.read("labels")) == want  # the branch head reads as before
    assert table_hash(ds.read("labels")) == main_want
    qa.upsert_labels(labels(FIDS[4:5], per_frame=1, cls="bike"))  # and takes writes
    assert qa.read("labels").filter(pl.col("cls") == "bike").height == 1
    kept = ds.gc(keep_within=timedelta(0)).roots
    ds.delete_branch("qa")
    after = ds.gc(keep_within=timedelta(0))
    assert "branch" not in set(after.roots["reason"])
    assert len(after.unreadable) > 0 and kept.height > after.roots.height
    assert table_hash(ds.read("labels")) == main_want


def test_branch_commands(local_lake: lv.Lake) -> None:
    import json

    from tests.test_cli import run

    uri = local_lake.uri
    ds = local_lake.create_dataset("street", classes=CLASSES)
    ds.add_frames(frames(FIDS[:4]))
    ds.upsert_labels(labels(FIDS[:4], per_frame=1))
    code, out, err = run("branch", "create", "street", "qa", "--uri", uri, "--json")
    assert code == 0, err
    assert json.loads(out)["name"] == "qa"
    rows = labels(FIDS[:1], per_frame=1, cls="person")
    ds.on_branch("qa").upsert_labels(rows)
    code, out, _ = run("show", "street", "--uri", uri, "--branch", "qa", "--json")
    assert code == 0 and {r["cls"] for r in json.loads(out)} == {"person", "car"}
    code, out, _ = run("--branch", "qa", "log", "street", "--uri", uri, "--json")
    assert code == 0 and json.loads(out)[0]["operation"] == "write"
    code, out, _ = run("show", "street", "--uri", uri, "--json")
    assert {r["cls"] for r in json.loads(out)} == {"car"}  # main
    code, out, _ = run("branch", "list", "street", "--uri", uri)
    assert code == 0 and "qa" in out and "main" in out
    code, out, _ = run("merge", "street", "qa", "--uri", uri, "--dry-run", "--json")
    assert code == 0 and json.loads(out)["fast_forward"] is True
    ds.upsert_labels(labels(FIDS[:1], per_frame=1, cls="bike"))  # a conflict on main
    code, out, _ = run("merge", "street", "qa", "--uri", uri, "--json")
    body = json.loads(out)
    assert code == 4 and body["error"]["exit_code"] == 4
    assert [c["kind"] for c in body["conflicts"]] == ["cell"]
    code, out, err = run("merge", "street", "qa", "--uri", uri, "--on-conflict", "theirs")
    assert code == 0, err
    assert "merged qa into main as commit" in out
    assert ds.read("labels").filter(pl.col("cls") == "person").height == 1
    code, _, err = run("branch", "delete", "street", "qa", "--uri", uri)
    assert code == 2 and "--yes" in err
    code, out, err = run("publish", "street", "qa", "qa-v1", "--uri", uri)
    assert code == 0 and "qa-v1" in out, err
    code, _, err = run("--branch", "qa", "revert", "street", "0", "--uri", uri)
    assert code == 1 and "published" in err  # a closed draft takes no writes
    code, _, err = run("show", "street", "--uri", uri, "--branch", "nope")
    assert code == 3 and "nope" in err


def test_a_branch_head_reads_without_lakever(lake: lv.Lake) -> None:
    """The README's recipe: the branch's ref file names every table's version."""
    ds = _street(lake)
    import json as _json

    from lakever.storage import user_location

    qa = ds.create_branch("qa")
    qa.upsert_labels(labels(FIDS[:3], per_frame=1, cls="person"))
    ds.upsert_labels(labels(FIDS[5:6], per_frame=1, cls="bike"))  # main moves on
    root = ds.root.uri
    options = ds.root.delta_options()

    def recipe(branch: str) -> pl.DataFrame:
        ref = _json.loads(
            user_location(f"{root}/_lakever/branches/{branch}.json", ds.root.options).read_bytes()
        )
        t = next(t for t in ref["tables"] if t["table"] == "labels")
        uri = f"{root}/{t['uri']}"
        return pl.scan_delta(uri, version=t["version"], storage_options=options).collect()

    assert table_hash(recipe("qa")) == table_hash(qa.read("labels"))
    assert table_hash(recipe("main")) == table_hash(ds.read("labels"))
    ds.delete_branch("qa")
    assert not user_location(f"{root}/_lakever/branches/qa.json", ds.root.options).exists()


def test_a_switch_without_the_change_feed_reads_the_rows_that_differ(
    ds: lv.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the feed between two heads is gone (GC), the switch reads rows instead."""
    from lakever import _changes, _restore

    many = [f"g{i:04d}" for i in range(200)]
    ds.add_frames(frames(many))
    ds.upsert_labels(labels(many, per_frame=10))  # 2,000 rows: an edit marks, not rewrites
    qa = ds.create_branch("qa")
    ds.upsert_labels(labels(FIDS[:2], per_frame=1, cls="truck"))  # marks rows in old files
    ds.delete_labels([f"{many[6]}-l0"])
    assert ds.head.table_versions["labels"] > qa.head.table_versions["labels"]
    want = _labels(qa)
    calls = []
    real = _restore._vector_differences

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[3])
        return real(*args, **kwargs)

    def no_feed(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise lv.StorageError("change feed file gone")

    monkeypatch.setattr(_changes, "cdf_change", no_feed)
    monkeypatch.setattr(_restore, "_vector_differences", spy)
    qa.upsert_labels(labels(FIDS[10:11], per_frame=1, cls="person"))
    monkeypatch.undo()
    assert calls, "the switch read the rows its vectors disagree on"
    want[f"{FIDS[10]}-l0"] = ("person", 10.0, 30.0)
    assert _labels(qa) == want
    d = ds.diff("main", "qa").rows("labels")
    assert set(d.filter(pl.col("change") == "modified")["label_id"]) >= {f"{FIDS[0]}-l0"}


def test_a_fast_forward_racing_a_commit_on_its_target_merges_it_instead(
    ds: lv.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    qa = ds.create_branch("qa")
    qa.upsert_labels(labels(FIDS[:1], per_frame=1, cls="person"))
    other = ds.on_branch("main")  # another writer on main
    real = type(ds._runner).fast_forward
    raced = []

    def racing(self, theirs, **kwargs):  # type: ignore[no-untyped-def]
        if not raced:  # a commit lands on main between planning and publishing
            raced.append(other.upsert_labels(labels(FIDS[9:10], per_frame=1, cls="bike")))
        return real(self, theirs, **kwargs)

    monkeypatch.setattr(type(ds._runner), "fast_forward", racing)
    result = ds.merge("qa")
    assert raced and not result.fast_forward and len(result.commit.parents) == 2
    got = _labels(ds)
    assert got[f"{FIDS[0]}-l0"][0] == "person" and got[f"{FIDS[9]}-l0"][0] == "bike"


def test_a_commit_after_a_switch_finds_its_rows_where_it_found_them(
    ds: lv.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The switch puts back the branch's own files and vectors: no row is looked up again."""
    from lakever import _mor

    qa = ds.create_branch("qa")
    moved, kept = f"{FIDS[1]}-l0", f"{FIDS[2]}-l0"
    gone_on_main = f"{FIDS[3]}-l1"
    ds.upsert_labels(labels([FIDS[1]], per_frame=1, cls="truck"))
    ds.delete_labels([gone_on_main])
    asked: list[list[str]] = []
    real = _mor.lookup

    def spy(loc, version, column, values, **kw):  # type: ignore[no-untyped-def]
        asked.append(sorted(values.to_list()))
        return real(loc, version, column, values, **kw)

    monkeypatch.setattr(_mor, "lookup", spy)
    with qa.transaction() as tx:
        tx.upsert_labels(labels([FIDS[1], FIDS[2]], per_frame=1, cls="person"))
        tx.delete_labels([gone_on_main])
    assert asked == []
    got = qa.read("labels")
    assert got["label_id"].n_unique() == got.height == len(FIDS) * 2 - 1
    rows = _labels(qa)
    assert rows[moved][0] == rows[kept][0] == "person" and gone_on_main not in rows
    main_rows = _labels(ds)
    assert main_rows[moved][0] == "truck" and main_rows[kept][0] == "car"
    assert gone_on_main not in main_rows and main_rows[f"{FIDS[4]}-l0"] == rows[f"{FIDS[4]}-l0"]


def test_positions_found_earlier_keep_only_rows_still_live_there(ds: lv.Dataset) -> None:
    """A lookup at one version stays valid at a later one for rows no edit touched."""
    from lakever import _deltalog, _feed, _mor

    loc = ds.table_location("labels")
    before = ds.head.table_versions["labels"]
    keys = [f"{f}-l0" for f in FIDS[:4]]
    schema = dict(ds.read("labels").schema)
    found = _feed.lookup(loc, before, "label_id", pl.Series(keys), table="labels", schema=schema)
    positions = found.select("label_id", _feed.FILE_COLUMN, _feed.POS_COLUMN)
    ds.delete_labels([keys[0]])
    ds.upsert_labels(labels([FIDS[1]], per_frame=1, cls="truck"))
    after = _deltalog.files_at(loc, ds.head.table_versions["labels"])
    still = _mor._still_placed(loc, after, positions)
    assert sorted(still["label_id"].to_list()) == keys[2:]
    now = _feed.lookup(
        loc, after.version, "label_id", pl.Series(keys[2:]), table="labels", schema=schema
    )
    assert still.sort("label_id").rows() == now.select(still.columns).sort("label_id").rows()
