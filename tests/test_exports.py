"""Exports: every file lands inside the folder named, and a folder holds one export only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lakever as lv
from lakever import filenames
from lakever.exports import MANIFEST
from tests.helpers import CLASSES, frames, labels

HOSTILE = [
    "../../escape",
    "/srv/abs-escape",
    "..",
    ".",
    "a\\..\\b",
    "nul\x00byte",
    "CON",
    "lpt1.txt",
    "cam 1/000123",
    "100%",
    "trailing.",
    "日本語のフレーム",
    "x" * 150,
]


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _hostile_dataset(lake: lv.Lake, ids: list[str]) -> lv.Dataset:
    ds = lake.create_dataset("hostile", classes=CLASSES)
    ds.add_frames(frames(ids, file_name=[f"{i}.jpg" for i in ids]))  # as a COCO file names them
    ds.upsert_labels(labels(ids, per_frame=1))
    return ds


def test_yolo_export_never_writes_outside_its_folder(local_lake: lv.Lake, tmp_path: Path) -> None:
    ds = _hostile_dataset(local_lake, HOSTILE)
    assert ds.at("HEAD").export_yolo(str(tmp_path / "out" / "yolo")) == len(HOSTILE)
    outside = {p for p in _files_under(tmp_path) if not p.startswith(("out/yolo/", "lake/"))}
    assert outside == set()
    assert not Path("/srv/abs-escape.txt").exists()
    by_id = _label_files(tmp_path / "out" / "yolo")
    assert sorted(by_id) == sorted(HOSTILE)
    assert all(text.count("\n") == 1 for text in by_id.values())  # its frame's one box


def _label_files(root: Path) -> dict[str, str]:
    """Frame id -> text of every label file of a YOLO export (through its frames.json)."""
    ids = json.loads((root / "frames.json").read_text())
    out = {}
    for p in (root / "labels").rglob("*.txt"):
        rel = str(p.relative_to(root / "labels")).removesuffix(".txt")
        out[ids[rel]] = p.read_text()
    assert len(out) == len(ids)
    return out


def test_cli_yolo_export_encodes_ids(local_lake: lv.Lake, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lakever.cli import app

    _hostile_dataset(local_lake, ["../../escape", "/srv/abs-escape"])
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["export", "hostile", str(out), "--format", "yolo", "--uri", local_lake.uri]
    )
    assert result.exit_code == 0, result.output
    assert _files_under(out) == {
        "labels/%2E%2E/%2E%2E/escape.txt",
        "labels/abs-escape.txt",
        "data.yaml",
        "images.txt",
        "frames.json",
        MANIFEST,
    }
    assert not (tmp_path / "escape.txt").exists()


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=1, max_size=120))
def test_encoded_names_are_one_safe_segment_and_decode_back(name: str) -> None:
    try:
        enc = filenames.encode(name)
    except lv.InvalidInputError:
        assert len(name.encode()) * 3 > filenames.MAX_ENCODED  # only over-long names
        return
    assert "/" not in enc and "\\" not in enc and "\x00" not in enc
    assert enc not in (".", "..") and not enc.startswith(".") and not enc.endswith(".")
    assert enc.isascii() and len(enc) <= filenames.MAX_ENCODED
    assert enc.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL", "COM1", "LPT1"}
    assert filenames.decode(enc) == name
    path = filenames.encode_path(name)
    assert all(seg and seg not in (".", "..") for seg in path.split("/"))
    assert not path.startswith("/") and filenames.decode_path(path) == name


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.lists(
            st.sampled_from(["..", ".", "/", "\\", "\x00", "a", "é", "CON", " ", "%", "x" * 90]),
            min_size=1,
            max_size=6,
        ).map("".join),
        min_size=1,
        max_size=6,
        unique=True,
    )
)
def test_generated_ids_never_escape_the_export(
    tmp_path_factory: pytest.TempPathFactory, ids: list[str]
) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    ids = [i for i in ids if i.strip() and len(i) < 60]  # keys must not be blank
    if not ids:
        return
    lake = lv.connect(root / "lake")
    _hostile_dataset(lake, ids)
    lake.dataset("hostile").export_yolo(str(root / "out"))
    outside = {p for p in _files_under(root) if not p.startswith(("out/", "lake/"))}
    assert outside == set()
    assert sorted(_label_files(root / "out")) == sorted(ids)


def test_location_refuses_paths_that_leave_it(tmp_path: Path) -> None:
    from lakever.storage import Location

    loc = Location(str(tmp_path))
    for bad in ("../x", "/etc/passwd", "a/../../b", "nul\x00"):
        with pytest.raises(lv.InvalidInputError, match="not a path inside"):
            loc.child(bad)
    assert loc.child("a", "b.txt").uri == f"{tmp_path}/a/b.txt"


# -- one export per folder -------------------------------------------------------------


def test_export_replaces_an_earlier_export_whole(lake: lv.Lake, tmp_path: Path) -> None:
    ds = lake.create_dataset("cams", classes=CLASSES)
    ds.add_frames(frames(range(3)))
    ds.upsert_labels(labels(["f00000", "f00001", "f00002"], per_frame=1))
    ds.upsert_inferences("yolo", labels(["f00000"], per_frame=1).with_columns(confidence=0.5))
    out = tmp_path / "out"
    ds.export_yolo(str(out))
    assert (out / "labels" / "f00002.txt").exists()
    ds.delete_labels(["f00002-l0"])
    ds.delete_frames(["f00002"])
    ds.export_yolo(str(out))
    assert not (out / "labels" / "f00002.txt").exists()  # a deleted frame's labels are gone
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["f00000.txt", "f00001.txt"]

    tables = tmp_path / "tables"
    ds.export(str(tables))
    assert (tables / "inferences" / "yolo.parquet").exists()
    ds.drop_inferences("yolo")
    written = ds.export(str(tables), format="csv")
    assert _files_under(tables) == {"frames.csv", "labels.csv", MANIFEST}
    assert len(written) == 2
    manifest = json.loads((tables / MANIFEST).read_text())
    assert manifest["seq"] == ds.head.seq and manifest["complete"] is True
    assert pl.read_csv(tables / "labels.csv").height == 2


def test_export_refuses_a_folder_holding_other_files(local_lake: lv.Lake, tmp_path: Path) -> None:
    ds = local_lake.create_dataset("cams", classes=CLASSES)
    ds.add_frames(frames(range(2)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(lv.InvalidInputError, match=r"notes\.txt.*overwrite=True"):
        ds.export(str(out))
    assert _files_under(out) == {"notes.txt"}  # nothing written, nothing removed
    with pytest.raises(lv.InvalidInputError, match=r"notes\.txt"):
        ds.export_yolo(str(out))
    ds.export(str(out), overwrite=True)
    assert _files_under(out) == {"frames.parquet", "labels.parquet", MANIFEST}


def test_cli_export_overwrite(local_lake: lv.Lake, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lakever.cli import app

    ds = local_lake.create_dataset("cams", classes=CLASSES)
    ds.add_frames(frames(range(2)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "stray.parquet").write_bytes(b"x")
    args = ["export", "cams", str(out), "--uri", local_lake.uri]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2, refused.output
    assert "stray.parquet" in refused.output
    done = CliRunner().invoke(app, [*args, "--overwrite"])
    assert done.exit_code == 0, done.output
    assert "stray.parquet" not in _files_under(out)


def test_export_killed_midway_is_recognised_next_time(
    local_lake: lv.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lakever.storage import Location

    ds = local_lake.create_dataset("cams", classes=CLASSES)
    ds.add_frames(frames(range(4)))
    out = tmp_path / "out"
    ds.export(str(out))
    real_put = Location.put
    calls = []

    def dying_put(self: Location, data: bytes) -> None:
        calls.append(self.uri)
        if len(calls) == 3:
            raise lv.StorageError(f"cannot write {self.uri}: the disk is full")
        real_put(self, data)

    monkeypatch.setattr(Location, "put", dying_put)
    with pytest.raises(lv.StorageError):
        ds.export(str(out), format="jsonl")
    monkeypatch.setattr(Location, "put", real_put)
    ds.export(str(out), format="csv")  # no file of the broken run counts as foreign
    assert _files_under(out) == {"frames.csv", "labels.csv", MANIFEST}


def test_export_files_follow_the_umask(local_lake: lv.Lake, tmp_path: Path) -> None:
    ds = local_lake.create_dataset("cams", classes=CLASSES)
    ds.add_frames(frames(range(2)))
    old = os.umask(0o022)
    try:
        ds.export(str(tmp_path / "out"))
        ds.export_coco(str(tmp_path / "doc.json"))
    finally:
        os.umask(old)
    for p in [*(tmp_path / "out").rglob("*.parquet"), tmp_path / "doc.json"]:
        assert p.stat().st_mode & 0o777 == 0o644, p


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_another_account_reads_the_lake_and_its_exports(tmp_path: Path) -> None:
    """Under umask 022 every file lakever writes is 0644: a second user reads each one."""
    import subprocess

    old = os.umask(0o022)
    try:
        lake = lv.connect(tmp_path / "lake")
        ds = lake.create_dataset("cams", classes=CLASSES)
        ds.add_frames(frames(range(3)))
        ds.create_snapshot("v1")
        ds.at("v1").read("frames")  # records the snapshot's load
        ds.export(str(tmp_path / "out"))
        ds.export_coco(str(tmp_path / "doc.json"))
    finally:
        os.umask(old)
    files = sorted(str(p) for p in tmp_path.rglob("*") if p.is_file() and "home" not in p.parts)
    assert any(f.endswith("_lakever/HEAD") for f in files)
    assert any("snapshot_loads" in f for f in files)
    opened = []  # let the other account walk down to tmp_path (pytest makes its dirs 0700)
    for parent in [tmp_path, *tmp_path.parents]:
        mode = parent.stat().st_mode & 0o777
        if mode & 0o001 == 0:
            opened.append((parent, mode))
            parent.chmod(mode | 0o001)
    try:
        result = subprocess.run(
            ["cat", *files],
            user=65534,
            group=65534,
            extra_groups=[],
            capture_output=True,
            timeout=60,
            check=False,
        )
    finally:
        for parent, mode in opened:
            parent.chmod(mode)
    assert result.returncode == 0, result.stderr.decode()[:3000]


def test_exports_stay_inside_their_prefix_on_the_lakes_store(lake: lv.Lake, tmp_path: Path) -> None:
    """Hostile frame ids exported next to the lake (local folder or S3 prefix)."""
    ds = _hostile_dataset(lake, ["../../escape", "/abs-escape", "a/../../b", "ok"])
    base = str(tmp_path) if lake.root.is_local else lake.uri.rsplit("/", 1)[0]
    target = f"{base}/exports/yolo"
    ds.export_yolo(target)
    ds.export(f"{base}/exports/tables")
    from lakever.storage import user_location

    everything = user_location(base, lake.root.options)
    paths = [p for p, _, _ in everything.list_tree()]
    outside = [p for p in paths if not p.startswith(("exports/yolo/", "exports/tables/", "lake/"))]
    assert outside == []
    labels_dir = user_location(f"{target}/labels", lake.root.options)
    names = {p.removesuffix(".txt") for p, _, _ in labels_dir.list_tree()}
    ids = json.loads(user_location(f"{target}/frames.json", lake.root.options).read_bytes())
    assert set(ids) == names
    assert sorted(ids.values()) == sorted(["../../escape", "/abs-escape", "a/../../b", "ok"])
