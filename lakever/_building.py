"""Datasets built in several steps (clones, merges of datasets): hidden until complete.

A plain `create_dataset` is one put-if-absent of ``dataset.json`` and one
commit. A clone links files, writes Delta logs and may publish several
commits; a crash in between must leave either no dataset (the name free to
use again) or a complete one. So the builder claims the name with a
``dataset.json`` that carries a ``creating`` claim (`lakever._claims`: a
host-local lock while the builder lives, its pid, and its start time for
other hosts). Opening or listing such a dataset says it does not exist. The
last step rewrites ``dataset.json`` without the claim: one atomic PUT, after
which the dataset is complete and visible.

A later builder or `create_dataset` that finds a claim whose writer is gone
removes what it left (as `delete_dataset` does) and takes the name. Another
host's claim counts as abandoned after `$LAKEVER_BUILD_TIMEOUT` seconds (one
hour), so a long clone on S3 is not taken for dead.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING

from lakever import _claims
from lakever.errors import DatasetExistsError
from lakever.info import DatasetInfo

if TYPE_CHECKING:
    from lakever.catalog import Lake
    from lakever.dataset import Dataset

log = logging.getLogger("lakever")

BUILD_TIMEOUT_ENV = "LAKEVER_BUILD_TIMEOUT"


def abandoned(info: DatasetInfo) -> bool:
    """Whether `info` is a build claim whose builder is gone."""
    if not info.creating:
        return False
    claim = {**info.creating, _claims.META_SEQ: "0"}
    age = _claims.env_seconds(BUILD_TIMEOUT_ENV, 3600.0)
    return not _claims.is_live(claim, -1, max_age=age)


def clear_abandoned(lake: Lake, name: str) -> bool:
    """Remove what a dead builder left under `name`; whether there was something."""
    marker = lake._dataset_root(name).child("_lakever", "dataset.json")
    data = marker.read_or_none()
    if data is None or not abandoned(DatasetInfo.from_json(data)):
        return False
    log.info("removing dataset %r: its build was interrupted", name)
    lake.delete_dataset(name, force=True)
    return True


class Build:
    """Claim `info.name` hidden, let the caller fill it, then reveal it (or remove it).

    Use as a context manager; call `finish()` as the last step. An exception
    before `finish()` removes everything the build wrote (best effort: what
    a crash leaves, the next builder of the name removes).
    """

    def __init__(self, lake: Lake, info: DatasetInfo) -> None:
        self._lake = lake
        self._attempt = _claims.Attempt(0)
        self._info = info
        self._done = False
        self.dataset: Dataset | None = None

    def __enter__(self) -> Dataset:
        lake, name = self._lake, self._info.name
        root = lake._dataset_root(name)
        marker = root.child("_lakever", "dataset.json")
        self._attempt.__enter__()
        claim = {
            _claims.META_WRITER: self._attempt.claim[_claims.META_WRITER],
            _claims.META_LOCK: self._attempt.claim[_claims.META_LOCK],
            "timestamp": str(int(time.time() * 1000)),
        }
        hidden = dataclasses.replace(self._info, creating=claim)
        try:
            for _ in range(2):
                if marker.put_if_absent(hidden.to_json()):
                    break
                if not clear_abandoned(lake, name):
                    raise DatasetExistsError(
                        f"a dataset named {name!r} already exists in {lake.uri} (or another "
                        "process is creating it); pick another name"
                    )
            else:
                raise DatasetExistsError(f"dataset {name!r} keeps appearing in {lake.uri}")
        except BaseException:
            self._attempt.__exit__(None, None, None)
            raise
        self.dataset = lake._open(root, hidden)
        return self.dataset

    def finish(self) -> None:
        """Reveal the dataset: rewrite dataset.json without the claim."""
        root = self._lake._dataset_root(self._info.name)
        root.child("_lakever", "dataset.json").put(self._info.to_json())
        self._done = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self._done:
                try:
                    self._lake.delete_dataset(self._info.name, force=True)
                except Exception as cleanup:  # the next builder of the name removes it
                    log.warning("could not remove the unfinished dataset: %s", cleanup)
        finally:
            self._attempt.__exit__(exc_type, exc, tb)
