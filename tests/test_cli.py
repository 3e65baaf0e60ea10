"""The command line: tables on a terminal, JSON with --json, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lakever as lv
from lakever.cli import app
from tests.helpers import CLASSES, frames, labels, read_only

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return str(tmp_path / "lake")


def test_quickstart_builds_two_snapshots_and_a_relabel(uri: str) -> None:
    code, out, err = run("quickstart", "--uri", uri, "--frames", "600", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [s["name"] for s in data["snapshots"]] == ["v1-import", "v2-relabel"]
    assert [c["seq"] for c in data["log"]] == [2, 1, 0]
    relabel = data["log"][0]["counts"]["labels"]
    assert relabel["modified"] > 0 and relabel["deleted"] > 0
    ds = lv.connect(uri).dataset("traffic-demo")
    assert ds.at("v1-import").read("frames").height == 600
    assert ds.read("labels").height == data["labels"]
    assert ds.at("v1-import").read("labels").height == data["labels"] + relabel["deleted"]
    # a second run does not clobber the first dataset
    code, out, _ = run("quickstart", "--uri", uri, "--frames", "100", "--json")
    assert code == 0
    assert json.loads(out)["dataset"] == "traffic-demo-2"


def test_log_datasets_and_snapshot_commands(uri: str) -> None:
    ds = lv.connect(uri).create_dataset("cams", classes=CLASSES, project="p")
    ds.add_frames(frames(range(3)), message="import 3")
    code, out, _ = run("datasets", "--uri", uri, "--json")
    assert code == 0 and [d["name"] for d in json.loads(out)] == ["cams"]
    code, out, _ = run("log", "cams", "--uri", uri)
    assert code == 0 and "import 3" in out and "frames +3" in out
    code, out, _ = run(
        "snapshot",
        "create",
        "cams",
        "v1",
        "--uri",
        uri,
        "--description",
        "first",
        "--meta",
        "split=train",
        "--meta",
        "n=3",
    )
    assert code == 0 and "v1" in out
    code, out, _ = run("snapshot", "show", "cams", "v1", "--uri", uri, "--json")
    shown = json.loads(out)
    assert shown["metadata"] == {"split": "train", "n": 3}
    assert shown["tables"]["frames"]["version"] == ds.head.table_versions["frames"]
    code, out, _ = run("snapshot", "list", "cams", "--uri", uri)
    assert code == 0 and "first" in out
    code, _, err = run("snapshot", "delete", "cams", "v1", "--uri", uri)
    assert code == 2 and "--yes" in err  # a usage error
    assert ds.snapshot("v1").name == "v1"
    code, _, _ = run("snapshot", "delete", "cams", "v1", "--uri", uri, "--yes")
    assert code == 0 and ds.list_snapshots() == []


def test_revert_asks_before_discarding_snapshots(uri: str) -> None:
    ds = lv.connect(uri).create_dataset("cams", classes=CLASSES)
    ds.add_frames(frames(range(3)))
    ds.create_snapshot("old")
    ds.add_frames(frames(range(3, 5)))
    ds.create_snapshot("new")
    code, _, err = run("revert", "cams", "old", "--uri", uri, "--discard-newer-snapshots")
    assert code == 2 and "new" in err and "--yes" in err  # a usage error
    assert ds.head.seq == 2
    code, out, _ = run(
        "revert", "cams", "old", "--uri", uri, "--discard-newer-snapshots", "--yes", "--json"
    )
    assert code == 0 and json.loads(out)["operation"] == "revert"
    assert ds.read("frames").height == 3
    assert [s.name for s in ds.list_snapshots()] == ["old"]


def test_errors_are_one_line_without_traceback(uri: str) -> None:
    code, _, err = run("log", "missing", "--uri", uri)
    assert code == 3  # not found
    assert err.strip().startswith("error: no lake at") and "Traceback" not in err
    lv.connect(uri).create_dataset("cams", classes=CLASSES)
    code, _, err = run("log", "missing", "--uri", uri)
    assert code == 3 and err.strip().startswith("error: no dataset named 'missing'")
    code, _, err = run("revert", "cams", "no-such-ref", "--uri", uri)
    assert code == 2 and "no-such-ref" in err and len(err.strip().splitlines()) == 1
    code, _, err = run("create", "cams", "--classes", "a", "--uri", uri)
    assert code == 4 and "already exists" in err  # conflict
    code, out, _ = run("log", "missing", "--uri", uri, "--json")
    assert code == 3
    assert json.loads(out)["error"]["type"] == "DatasetNotFoundError"
    assert "missing" in json.loads(out)["error"]["message"]
    result = runner.invoke(app, ["log", "missing", "--uri", uri, "--verbose"])
    assert isinstance(result.exception, lv.DatasetNotFoundError)


def test_unreachable_store_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code, _, err = run("datasets", "--uri", "s3://nobucket/lake")
    assert code == 1
    assert err.startswith("error: cannot") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("chattr") is None, reason="needs chattr")
def test_read_only_lake_is_one_line_and_writes_nothing(uri: str) -> None:
    ds = lv.connect(uri).create_dataset("cams", classes=CLASSES)
    ds.add_frames(frames(range(2)))
    commits = Path(uri, "datasets", "cams", "_lakever", "commits")
    with read_only(commits):
        code, _, err = run(
            "snapshot", "create", "cams", "s1", "--uri", uri
        )  # the tag table is writable: works
        assert code == 0, err
        result = runner.invoke(app, ["revert", "cams", "1", "--uri", uri])
        assert result.exit_code == 0  # already equal: no commit needed
        code, _, err = run("revert", "cams", "0", "--uri", uri)
        # the file system refuses: access denied, exit code 5, one line
        assert code == 5 and err.startswith("error: access denied: cannot write"), err
        assert "\n" not in err.strip()
    assert ds.head.seq == 1
    assert ds.read("frames").height == 2
    assert ds.revert(0).seq == 2  # the lake was left writable


def test_installed_entry_point_runs(tmp_path: Path) -> None:
    # the entry point installed beside the interpreter running the tests (venv active or not)
    exe = str(Path(sys.executable).with_name("lakever"))
    proc = subprocess.run(
        [exe, "quickstart", "--frames", "300"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "v2-relabel" in proc.stdout and "Try next" in proc.stdout
    assert (tmp_path / "lakever-data" / "datasets" / "traffic-demo").is_dir()


def test_diff_status_and_history_commands(uri: str) -> None:
    ds = lv.connect(uri).create_dataset("cams", classes=CLASSES)
    ds.add_frames(frames(range(3)))
    ds.upsert_labels(labels(["f00000", "f00001"]))
    ds.create_snapshot("v1")
    ds.upsert_labels(labels(["f00000"], cls="person"), message="relabel", author="qa")
    ds.delete_labels(["f00001-l0"])
    ds.create_snapshot("v2")
    code, out, _ = run("diff", "cams", "v1", "v2", "--rows", "--json", "--uri", uri)
    assert code == 0
    data = json.loads(out)
    assert {r["table"]: (r["added"], r["deleted"], r["modified"]) for r in data["summary"]} == {
        "frames": (0, 0, 0),
        "labels": (0, 1, 2),
    }
    assert data["class_changes"]["labels"]["transitions"] == [
        {"from_cls": "car", "to_cls": "person", "count": 2}
    ]
    assert sorted(r["label_id"] for r in data["rows"]["labels"]) == [
        "f00000-l0",
        "f00000-l1",
        "f00001-l0",
    ]
    code, out, _ = run(
        "diff", "cams", "v1", "--table", "labels", "--rows", "--limit", "1", "--uri", uri
    )
    assert code == 0
    assert "f00000-l0" in out
    assert "f00001-l0" not in out  # --limit 1
    ds.delete_labels(["f00001-l1"])
    code, out, _ = run("status", "cams", "--json", "--uri", uri)
    assert code == 0
    labels_row = next(r for r in json.loads(out)["summary"] if r["table"] == "labels")
    assert (labels_row["deleted"], labels_row["modified"]) == (1, 0)
    code, out, _ = run("history", "cams", "--label-id", "f00000-l0", "--json", "--uri", uri)
    assert code == 0
    entries = json.loads(out)
    assert [(e["seq"], e["change"], e["author"]) for e in entries] == [
        (2, "added", "tester"),
        (3, "modified", "qa"),
    ]
    code, _, err = run("history", "cams", "--uri", uri)
    assert code == 2
    assert "--frame-id" in err
    code, _, err = run("history", "cams", "--label-id", "never-was", "--uri", uri)
    assert code == 3 and "'never-was' has never existed" in err


def test_repair_delete_and_verbose_listing(uri: str) -> None:
    ds = lv.connect(uri).create_dataset("cams", classes=CLASSES)
    ds.add_frames(frames(range(3)))
    ds.create_snapshot("v1")
    code, out, _ = run("repair", "cams", "--uri", uri)
    assert code == 0 and "nothing to repair" in out
    code, out, _ = run("revert", "cams", "v1", "--uri", uri)
    assert code == 0 and "HEAD already equals v1" in out
    Path(uri, "datasets", "notes.txt").write_text("x")
    code, out, err = run("datasets", "--uri", uri, "--verbose")
    assert code == 0 and "cams" in out and "skipped 'notes.txt'" in err
    code, _, err = run("delete", "cams", "--uri", uri)
    assert code == 2 and "--yes" in err
    code, _, err = run("delete", "cams", "--uri", uri, "--yes")
    assert code == 4 and "snapshot" in err  # refuses to drop snapshots silently
    code, out, _ = run("delete", "cams", "--uri", uri, "--yes", "--force", "--json")
    assert code == 0 and json.loads(out) == {"deleted": "cams"}
    code, _, err = run("log", "cams", "--uri", uri)
    assert code == 3 and "no dataset named 'cams'" in err


def test_repair_command_reports_and_fixes_lost_files(uri: str) -> None:
    ds = lv.connect(uri).create_dataset("cams", classes=CLASSES)
    ds.add_frames(frames(range(3)))
    for f in Path(uri, "datasets", "cams", "frames").glob("*.parquet"):
        f.unlink()  # files lost by hand
    code, out, _ = run("repair", "cams", "--uri", uri)
    assert code == 0 and "lost 1 file(s), 3 row(s)" in out and "--yes" in out
    code, out, _ = run("repair", "cams", "--uri", uri, "--yes", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["commit"]["operation"] == "repair"
    assert report["commit"]["counts"]["frames"]["deleted"] == 3
    assert ds.read("frames").height == 0
    assert ds.add_frames(frames(range(1))).seq == 3
