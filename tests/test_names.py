from __future__ import annotations

import pytest

import lakever as lv
from tests.helpers import CLASSES


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "..", "a..b", "x\\y", "-lead", "tab\tname", "a" * 129, "sp ace", "é", "abc\n"],
)
def test_bad_dataset_names_are_refused(local_lake: lv.Lake, name: str) -> None:
    local_lake.create_dataset("fine", classes=CLASSES)
    with pytest.raises(lv.InvalidNameError):
        local_lake.create_dataset(name, classes=CLASSES)
    assert local_lake.list_datasets()["name"].to_list() == ["fine"]
    assert local_lake.invalid_entries().is_empty()  # nothing half-written


@pytest.mark.parametrize(
    "name", ["", "  ", "a/b", "..", "x\\y", "bell\x07", "a" * 201, " pad", "head", "HEAD", "Head"]
)
def test_bad_snapshot_names_are_refused(local_lake: lv.Lake, name: str) -> None:
    ds = local_lake.create_dataset("ok-name_1.0", classes=CLASSES)
    with pytest.raises(lv.InvalidNameError):
        ds.create_snapshot(name)
    assert ds.list_snapshots() == []


def test_snapshot_names_may_hold_spaces_and_quotes(local_lake: lv.Lake) -> None:
    ds = local_lake.create_dataset("d", classes=CLASSES)
    ds.create_snapshot("before Bob's relabel: v1")
    assert ds.snapshot("before Bob's relabel: v1").commit_seq == 0
    ds.delete_snapshot("before Bob's relabel: v1")
    assert ds.list_snapshots() == []
