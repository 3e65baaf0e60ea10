"""The eval, evals and segment commands."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

import lakever as lv
from tests.test_cli import run
from tests.test_evaluation import _relabel_fixture


def test_eval_and_evals(tmp_path: Path) -> None:
    ds, _ = _relabel_fixture(tmp_path)
    uri = str(tmp_path / "lake")
    code, out, err = run("eval", "r", "det", "--uri", uri)
    assert code == 0, err
    assert "AP @[IoU=0.50 | area=all | maxDets=100]" in out and "worst" in out
    code, out, err = run("--json", "--uri", uri, "eval", "r", "det", "--against", "HEAD")
    assert code == 0, err
    data = json.loads(out)
    assert data["against"] == ds.head.seq
    assert data["summary"]["AP50"] == ds.evaluations()["AP50"][0]
    code, out, _ = run("evals", "r", "--uri", uri, "--json")
    assert [e["evaluation_id"] for e in json.loads(out)] == ds.evaluations()[
        "evaluation_id"].to_list()  # fmt: skip
    code, _, err = run("eval", "r", "nope", "--uri", uri)
    assert code == 3 and "no inference set 'nope'" in err


def test_segment_commands(tmp_path: Path) -> None:
    ds, _ = _relabel_fixture(tmp_path)
    uri = str(tmp_path / "lake")
    code, out, err = run(
        "segment",
        "create",
        "r",
        "misses",
        "--label-ids",
        "1,2",
        "--predictions",
        "det=0",
        "--description",
        "check",
        "--uri",
        uri,
    )
    assert code == 0, err
    assert "3 element(s)" in out
    ds.upsert_labels(ds.read("labels").filter(pl.col("label_id") == "2").with_columns(w=1.0))
    code, out, err = run("segment", "show", "r", "misses", "--uri", uri, "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert [(r["key"], r["change"]) for r in shown["outdated"]] == [("2", "modified")]
    code, out, _ = run("segment", "remove", "r", "misses", "--label-ids", "1", "--uri", uri)
    assert code == 0 and "removed 1" in out
    code, out, _ = run("segment", "state", "r", "misses", "resolved", "--uri", uri)
    assert code == 0
    code, out, _ = run("segment", "list", "r", "--uri", uri, "--json")
    assert [(s["name"], s["state"], s["elements"]) for s in json.loads(out)] == [
        ("misses", "resolved", 2)]  # fmt: skip
    code, _, err = run("segment", "create", "r", "misses", "--uri", uri)
    assert code == 4
    code, _, err = run("segment", "add", "r", "misses", "--label-ids", "zzz", "--uri", uri)
    assert code == 3 and "zzz" in err
    code, _, _ = run("segment", "delete", "r", "misses", "--uri", uri)
    assert code == 2
    code, _, _ = run("segment", "delete", "r", "misses", "--yes", "--uri", uri)
    assert code == 0 and lv.connect(uri).dataset("r").segments().is_empty()
