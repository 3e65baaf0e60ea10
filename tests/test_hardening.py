"""Refs belong to their dataset, a portable lake, listing, errors and small no-ops."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import lakever as lv
from lakever import _delta
from lakever.storage import Location
from tests.helpers import CLASSES, content_hash, frames, labels


@pytest.fixture
def two(local_lake: lv.Lake) -> tuple[lv.Dataset, lv.Dataset]:
    a = local_lake.create_dataset("a", classes=CLASSES)
    b = local_lake.create_dataset("b", classes=CLASSES)
    a.add_frames(frames(range(2)))
    b.add_frames(frames(range(5)))
    b.add_frames(frames(range(5, 6)))
    return a, b


def test_refs_of_another_dataset_are_refused(two: tuple[lv.Dataset, lv.Dataset]) -> None:
    a, b = two
    snap = b.create_snapshot("x")
    before = a.head
    for ref in (b.head, snap, b.at(1)):
        with pytest.raises(lv.InvalidRefError, match="not part of dataset 'a'"):
            a.revert(ref)  # type: ignore[arg-type]
        with pytest.raises(lv.InvalidRefError):
            a.at(ref)  # type: ignore[arg-type]
        with pytest.raises(lv.InvalidRefError):
            a.create_snapshot("y", ref=ref)  # type: ignore[arg-type]
    assert a.head == before and a.list_snapshots() == []
    assert a.at(a.at(1)).commit == a.head  # its own view is fine


def test_numpy_seqs_odd_digits_and_local_naive_times(two: tuple[lv.Dataset, lv.Dataset]) -> None:
    _, b = two
    assert b.at(np.int64(1)).commit.seq == 1
    with pytest.raises(lv.InvalidRefError):
        b.at("²")
    # UTC+9: a naive time read as UTC would miss. tzset() reads the C environment,
    # where the suite set TZ before any test ran: this overwrites it in place.
    process_tz = os.environ["TZ"]
    os.putenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        local = b.log()[1].created_at.astimezone().replace(tzinfo=None)
        assert local.hour == (b.log()[1].created_at.hour + 9) % 24
        assert b.resolve(local).seq == 1
        assert b.resolve(local.isoformat()).seq == 1
    finally:
        os.putenv("TZ", process_tz)
        time.tzset()


def test_a_tests_environment_never_reaches_the_c_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Adding to the C environment can crash a process that read S3 through Polars (conftest)."""
    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_char_p
    monkeypatch.setenv("LAKEVER_PROBE", "1")
    assert os.getenv("LAKEVER_PROBE") == "1"
    assert libc.getenv(b"LAKEVER_PROBE") is None
    assert libc.getenv(b"AWS_ACCESS_KEY_ID") == b"testing"


def test_moved_lake_reads_through_the_recipe(tmp_path: Path) -> None:
    lake = lv.connect(tmp_path / "old")
    ds = lake.create_dataset("street", classes=CLASSES)
    ds.add_frames(frames(range(3)))
    ds.create_snapshot("train-v1")
    ds.add_frames(frames(range(3, 5)))
    expected = content_hash(ds.at("train-v1"))
    shutil.move(tmp_path / "old", tmp_path / "new")
    root = str(tmp_path / "new" / "datasets" / "street")
    # the README recipe, verbatim in spirit
    tags = pl.read_delta(f"{root}/snapshots").filter(pl.col("name") == "train-v1")
    t = tags.explode("tables").unnest("tables").filter(pl.col("table") == "frames")
    row = t.row(0, named=True)
    got = pl.scan_delta(f"{root}/{row['uri']}", version=row["version"]).collect()
    assert sorted(got["frame_id"]) == ["f00000", "f00001", "f00002"]
    moved = lv.connect(tmp_path / "new").dataset("street")
    assert content_hash(moved.at("train-v1")) == expected


def test_listing_skips_what_is_not_a_dataset(local_lake: lv.Lake) -> None:
    local_lake.create_dataset("Validation-1", classes=CLASSES)
    local_lake.create_dataset("Validation-2", classes=CLASSES)
    local_lake.create_dataset("cam01", classes=CLASSES)
    base = Path(local_lake.uri, "datasets")
    (base / ".DS_Store").write_bytes(b"\0")
    (base / "notes.txt").write_text("hello")
    (base / "half" / "_lakever").mkdir(parents=True)
    assert local_lake.list_datasets()["name"].to_list() == ["Validation-1", "Validation-2", "cam01"]
    skipped = set(local_lake.invalid_entries()["name"])
    assert skipped == {".DS_Store", "notes.txt", "half"}
    assert local_lake.list_datasets(name_like="Validation%").height == 2
    assert local_lake.list_datasets(name_like="cam__")["name"].to_list() == ["cam01"]
    assert local_lake.list_datasets(name_like="cam_").height == 0  # LIKE matches whole names


def test_missing_lake_is_an_error_for_reads(tmp_path: Path) -> None:
    with pytest.raises(lv.LakeNotFoundError, match="no lake at"):
        lv.connect(tmp_path / "nowhere").list_datasets()
    with pytest.raises(lv.LakeNotFoundError):
        lv.connect(tmp_path / "nowhere").dataset("x")
    assert not (tmp_path / "nowhere").exists()


def test_bad_arguments_are_lakever_errors_and_write_nothing(local_lake: lv.Lake) -> None:
    with pytest.raises(lv.InvalidInputError, match="'car'"):
        local_lake.create_dataset("d", classes="car")
    assert not Path(local_lake.uri, "datasets", "d").exists()
    ds = local_lake.create_dataset("d", classes=CLASSES)
    for batch in (42, "f1", [1, 2], object()):
        with pytest.raises(lv.InvalidInputError):
            ds.add_frames(batch)
    with pytest.raises(lv.InvalidInputError):
        ds.log(limit=-1)
    assert ds.head.seq == 0


def test_no_credentials_is_a_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    # These reach botocore through os.environ; the C environment keeps the
    # suite's test credentials (conftest), so the message is what shows which path ran.
    with pytest.raises(lv.StorageError, match="Unable to locate credentials"):
        lv.connect("s3://bucket/lake").list_datasets()


def test_a_changed_aws_variable_takes_effect_on_the_next_call(
    monkeypatch: pytest.MonkeyPatch, s3_server: Any, s3_bucket: str
) -> None:
    """S3 settings read the environment as it stands, not as it stood at first use."""
    uri = f"s3://{s3_bucket}/lake"
    lv.connect(uri, storage_options=s3_server.storage_options()).create_dataset(
        "cams", classes=CLASSES
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    lake = lv.connect(uri)
    with pytest.raises(lv.StorageError, match=r"127\.0\.0\.1:9/"):
        lake.list_datasets()
    before = Location(uri).fingerprint
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    assert lake.list_datasets()["name"].to_list() == ["cams"]
    assert Location(uri).fingerprint != before  # cached tables are not shared either
    local = Location("/tmp/lake").fingerprint
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "another")
    assert Location("/tmp/lake").fingerprint == local  # a local lake ignores AWS settings


def test_empty_batches_limits_and_equal_reverts_are_no_ops(lake: lv.Lake) -> None:
    ds = lake.create_dataset("noop", classes=CLASSES)
    head = ds.head
    assert ds.add_frames([]) == head
    assert ds.upsert_labels(pl.DataFrame()) == head
    assert ds.delete_frames([]) == head
    assert ds.log(limit=0) == []
    ds.add_frames(frames(range(2)))
    ds.create_snapshot("train-v1")
    ds.add_frames(frames(range(2, 3)))
    ds.delete_frames(["f00002"])  # content equals train-v1 again, new Delta versions
    head = ds.head
    assert ds.revert("train-v1") == head  # no commit, no new versions
    assert ds.head == head


def test_inference_rows_are_checked_against_the_pin(local_lake: lv.Lake) -> None:
    ds = local_lake.create_dataset("pins", classes=CLASSES)
    ds.add_frames(frames(range(3)))
    ds.create_snapshot("eval")
    preds = labels(["f00000", "f00001"], per_frame=1).with_columns(confidence=pl.lit(0.5))
    ds.upsert_inferences("m", preds, pinned_to="eval")
    ds.delete_frames(["f00001"])  # the pinned predictions stay
    assert ds.read("inferences/m").height == 2
    more = labels(["f00001"], per_frame=1, start=7).with_columns(confidence=pl.lit(0.4))
    ds.upsert_inferences("m", more)  # f00001 exists at the pin, though not at HEAD
    assert ds.read("inferences/m").height == 3
    with pytest.raises(lv.ValidationError) as info:
        ds.upsert_inferences("m2", more)  # a new set is pinned to now: f00001 is gone
    assert info.value.rules == {"missing_frame"}
    ds.add_frames(frames(range(3, 4)))
    newer = labels(["f00003"], per_frame=1).with_columns(confidence=pl.lit(0.3))
    ds.upsert_inferences("m", newer)  # frames added since the pin count too
    never = labels(["nope"], per_frame=1).with_columns(confidence=pl.lit(0.3))
    with pytest.raises(lv.ValidationError, match="pinned to"):
        ds.upsert_inferences("m", never)
    assert ds.snapshot("eval").commit_seq == ds.head.pins["m"]  # the pin never moved


def test_table_cache_is_keyed_by_credentials(local_lake: lv.Lake) -> None:
    ds = local_lake.create_dataset("c", classes=CLASSES)
    loc = ds.table_location("frames")
    other = lv.connect(local_lake.uri, storage_options={"AWS_ACCESS_KEY_ID": "someone-else"})
    loc2 = other.dataset("c").table_location("frames")
    assert loc.uri == loc2.uri and loc.fingerprint != loc2.fingerprint
    assert _delta.table_at(loc, 0) is not _delta.table_at(loc2, 0)
    assert "someone-else" not in loc2.fingerprint


def test_missing_bucket_is_an_error_for_reads(s3_server: object) -> None:
    options = s3_server.storage_options()  # type: ignore[attr-defined]
    with pytest.raises(lv.LakeNotFoundError, match="bucket does not exist"):
        lv.connect("s3://no-such-bucket-here/lake", storage_options=options).list_datasets()


def test_tag_rows_with_absolute_uris_keep_reading(local_lake: lv.Lake) -> None:
    ds = local_lake.create_dataset("old", classes=CLASSES)
    ds.add_frames(frames(range(2)))
    ds.create_snapshot("new-style")
    row = ds.snapshots_frame().with_columns(
        pl.lit("old-style").alias("name"),
        pl.col("tables").list.eval(
            pl.struct(
                pl.element().struct.field("table"),
                (pl.lit(ds.root.uri + "/") + pl.element().struct.field("uri")).alias("uri"),
                pl.element().struct.field("version"),
            )
        ),
    )
    from deltalake import write_deltalake

    write_deltalake(ds.tag_table_uri, row.to_arrow(), mode="append")  # as lakever 0.1 wrote
    assert ds.at("old-style").read("frames").height == 2
    assert [s.name for s in ds.list_snapshots()] == ["new-style", "old-style"]


# -- hostile-input probes, round three (named after what they found) --------------------


def test_spans_past_a_century_are_invalid_input(
    local_lake: lv.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from typer.testing import CliRunner

    from lakever.cli import app

    ds = local_lake.create_dataset("d", classes=CLASSES)
    result = CliRunner().invoke(
        app, ["gc", "d", "--keep-within", "999999999999d", "--uri", local_lake.uri]
    )
    assert result.exit_code == 2, result.output
    assert "999999999999d" in result.output
    with pytest.raises(lv.InvalidInputError, match="at most 36500 days"):
        ds.gc(keep_within=timedelta(days=999_999_999))
    monkeypatch.setenv("LAKEVER_SNAPSHOT_MIN_LOADED_AGE", "999999999999d")
    with pytest.raises(lv.InvalidInputError, match="LAKEVER_SNAPSHOT_MIN_LOADED_AGE"):
        lv.connect(local_lake.uri)
    assert ds.gc(keep_within=timedelta(days=36500)).applied is False  # the bound itself is fine


def test_evaluation_parameters_name_the_one_at_fault(local_lake: lv.Lake) -> None:
    ds = local_lake.create_dataset("d", classes=CLASSES)
    ds.add_frames(frames(range(2)))
    ds.upsert_labels(labels(["f00000"], per_frame=1))
    ds.upsert_inferences("p", labels(["f00000"], per_frame=1).with_columns(confidence=0.5))
    cases = [
        ({"max_dets": ["ten"]}, r"max_dets.*'ten'"),
        ({"max_dets": [1.5]}, r"max_dets.*1\.5"),
        ({"area_ranges": {"tiny": (0,)}}, r"area_ranges\['tiny'\]"),
        ({"area_ranges": {"tiny": (5, 1)}}, r"area_ranges\['tiny'\]"),
        ({"area_ranges": {"tiny": ("a", 1)}}, r"area_ranges\['tiny'\].*'a'"),
        ({"iou_thresholds": [float("nan")]}, "iou_thresholds"),
    ]
    for kwargs, match in cases:
        with pytest.raises(lv.InvalidInputError, match=match):
            ds.evaluate("p", **kwargs)
    assert ds.evaluate("p", area_ranges={"tiny": (0, 32**2)}).summary["AP"] == 1.0


def test_history_shows_decimal_and_binary_columns(local_lake: lv.Lake) -> None:
    from decimal import Decimal

    ds = local_lake.create_dataset("d", classes=CLASSES)
    f = frames(["a"]).with_columns(
        price=pl.Series([Decimal("1.50")], dtype=pl.Decimal(10, 2)),
        blob=pl.Series([b"\x00\xff"], dtype=pl.Binary),
    )
    ds.add_frames(f)
    ds.upsert_frames(f.with_columns(price=pl.Series([Decimal("2.25")], dtype=pl.Decimal(10, 2))))
    h = ds.history(frame_id="a")
    assert h.height == 2
    last = json.loads(h.sort("seq")["after"][-1])
    assert last["price"] == "2.25" and last["blob"] == "00ff"
    assert h.sort("seq")["changed"][-1].to_list() == ["price"]


def test_a_date_ref_out_of_range_is_an_invalid_ref(local_lake: lv.Lake) -> None:
    ds = local_lake.create_dataset("d", classes=CLASSES)
    for ref in ("0001-01-01", "0001-01-01T00:00:00+05:00"):
        with pytest.raises(lv.InvalidRefError, match="outside the times"):
            ds.at(ref)


def test_a_mixed_pandas_column_is_named_with_its_value(local_lake: lv.Lake) -> None:
    pd = pytest.importorskip("pandas")
    ds = local_lake.create_dataset("d", classes=CLASSES)
    df = frames(range(2)).to_pandas()
    df["extra"] = pd.Series([1, "x"], dtype=object)
    with pytest.raises(lv.InvalidInputError, match=r"column 'extra'.*'x'"):
        ds.add_frames(df)
    assert ds.head.seq == 0
