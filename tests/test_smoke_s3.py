from __future__ import annotations

import lakever as lv
from tests.helpers import CLASSES, frames, labels


def test_create_write_read(lake: lv.Lake) -> None:
    ds = lake.create_dataset("smoke", classes=CLASSES)
    ds.add_frames(frames(range(5)))
    c = ds.upsert_labels(labels([f"f{i:05d}" for i in range(5)]))
    assert c.seq == 2
    assert ds.read("labels").height == 10
    assert lake.dataset("smoke").head.seq == 2
