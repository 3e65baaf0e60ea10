"""The command line as a newcomer meets it: whole tables, exit codes, the --json contract."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import lakever as lv
from lakever.cli.app import main
from tests.helpers import CLASSES, frames, labels
from tests.test_cli import run
from tests.test_formats import EXAMPLE


@pytest.fixture
def uri(tmp_path: Path) -> str:
    ds = lv.connect(tmp_path / "lake").create_dataset("street", classes=CLASSES)
    ds.add_frames(frames(range(3)))
    ds.upsert_labels(labels(["f00000", "f00001"], per_frame=2))
    ds.create_snapshot("train-v1-with-a-long-name")
    ds.create_snapshot("train-v2-with-a-long-name")
    return str(tmp_path / "lake")


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str):
    monkeypatch.setattr(sys, "argv", ["lakever", *args])
    with pytest.raises(SystemExit) as done:
        main()
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


def test_tables_never_cut_names_ids_or_times(uri: str) -> None:
    code, out, _ = run("snapshot", "list", "street", "--uri", uri)
    assert code == 0
    assert "train-v1-with-a-long-name" in out and "train-v2-with-a-long-name" in out
    assert "…" not in out.split("description")[0]
    code, out, _ = run("show", "street", "--uri", uri, "--table", "labels")
    assert code == 0
    for header in ("label_id", "frame_id", "cls"):
        assert header in out
    assert "f00000-l0" in out


def test_show_columns(uri: str) -> None:
    code, out, _ = run("show", "street", "--uri", uri, "--columns", "label_id,cls", "--json")
    assert code == 0
    rows = json.loads(out)
    assert rows and all(set(r) == {"label_id", "cls"} for r in rows)
    code, _, err = run("show", "street", "--uri", uri, "--columns", "label_id,nope")
    assert code == 2 and "nope" in err and "label_id" in err


def test_where_with_a_class_outside_the_class_map_says_so(uri: str) -> None:
    code, _, err = run("show", "street", "--uri", uri, "--where", "cls = 'cra'")
    assert code == 2
    assert "'cra'" in err and "car" in err and "person" in err
    code, _, err = run("show", "street", "--uri", uri, "--where", "cls IN ('car', 'bkie')")
    assert code == 2 and "'bkie'" in err
    code, out, _ = run(
        "show", "street", "--uri", uri, "--where", "cls = 'car' AND frame_id = 'f00001'", "--json"
    )
    assert code == 0 and len(json.loads(out)) == 2  # other quoted values are not classes


def test_export_infers_coco_from_a_json_name(uri: str, tmp_path: Path) -> None:
    code, _, err = run("export", "street", str(tmp_path / "head.json"), "--uri", uri)
    assert code == 0, err
    doc = json.loads((tmp_path / "head.json").read_text())
    assert len(doc["images"]) == 3 and len(doc["annotations"]) == 4
    code, _, err = run("export", "street", str(tmp_path / "head.csv"), "--uri", uri)
    assert code == 2 and "--format" in err
    code, _, err = run("export", "street", str(tmp_path / "tables"), "--uri", uri)
    assert code == 0 and (tmp_path / "tables" / "labels.parquet").exists()


def test_a_generated_snapshot_name_is_a_typeable_ref(uri: str) -> None:
    code, out, _ = run("snapshot", "create", "street", "--uri", uri, "--json")
    assert code == 0
    name = json.loads(out)["name"]
    assert all(ch.isalnum() or ch == "-" for ch in name), name
    code, out, _ = run("show", "street", name, "--uri", uri, "--json")
    assert code == 0 and len(json.loads(out)) == 4


def test_exit_codes_follow_the_readme(uri: str, tmp_path: Path) -> None:
    code, _, err = run("delete", "street", "--yes", "--uri", uri)
    assert code == 4 and "--force" in err
    code, _, err = run("import", "coco", str(tmp_path / "missing.json"), "x", "--uri", uri)
    assert code == 3 and "missing.json" in err
    code, _, err = run("snapshot", "delete", "street", "train-v1-with-a-long-name", "--uri", uri)
    assert code == 2 and "--yes" in err
    code, out, _ = run(
        "snapshot", "delete", "street", "train-v1-with-a-long-name", "--uri", uri, "--json"
    )
    assert code == 2 and json.loads(out)["error"]["exit_code"] == 2


def test_usage_errors_follow_the_json_contract(
    uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _main(monkeypatch, capsys, "--json", "lgo")
    assert code == 2
    error = json.loads(out)["error"]
    assert error["exit_code"] == 2 and "lgo" in error["message"] and "log" in error["message"]
    code, out, err = _main(monkeypatch, capsys, "lgo")
    assert code == 2 and out == ""
    assert err.startswith("error: No such command 'lgo'") and len(err.strip().splitlines()) == 1
    assert "╭" not in err
    code, _, err = _main(monkeypatch, capsys, "log", "street", "--bogus", "--uri", uri)
    assert code == 2 and "--bogus" in err
    code, out, _ = _main(monkeypatch, capsys, "log", "street", "--uri", uri, "--json")
    assert code == 0 and json.loads(out)[0]["seq"] == 2


def test_help_is_plain_and_consistent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _main(monkeypatch, capsys, "import", "--help")
    assert code == 0
    assert "Usage: lakever import [OPTIONS] {FORMAT} {SOURCE} {DATASET}" in out
    code, out, _ = _main(monkeypatch, capsys, "--help")
    assert code == 0 and "<bool>" not in out and "--version" in out


def test_upload_show_counts_commits_once(uri: str) -> None:
    ds = lv.connect(uri).dataset("street")
    up = ds.ingest(frames=frames(range(3, 5)), upload_id="u1")
    code, out, _ = run("upload", "show", "street", "u1", "--uri", uri)
    assert code == 0
    assert f"its commits (seq): {up.commits[0]}" in out
    assert "commits: " not in out


def test_coco_import_shows_progress_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LAKEVER_PROGRESS", "1")
    lake = lv.connect(tmp_path / "lake")
    steps = []
    from lakever import _progress

    real = _progress.phase

    def spy(text: str, show: bool | None = None):  # type: ignore[no-untyped-def]
        steps.append(text)
        return real(text, show)

    monkeypatch.setattr("lakever.dataio.phase", spy)
    monkeypatch.setattr("lakever.catalog.phase", spy)
    lake.import_coco("c", str(EXAMPLE))
    assert steps[0].startswith("reading ") and str(EXAMPLE) in steps[0]
    assert steps[1] == "converting 4 images and 4 annotations"
    assert "rows" in capsys.readouterr().err  # then the upload's bar
