"""What a dataset is: its identity and description, fixed at creation.

Stored as ``<dataset>/_lakever/dataset.json``, written once with
put-if-absent, which makes creation of a name atomic. A dataset built in
several steps (a clone, a merge of datasets) first writes it with a
``creating`` claim, which hides the dataset until the last step rewrites it
without one; a claim whose writer died marks leftovers anyone may remove.
"""

from __future__ import annotations

import getpass
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lakever.commits import now_utc
from lakever.storage import Location

#: Environment variable naming the author recorded on commits.
ENV_AUTHOR = "LAKEVER_AUTHOR"


def default_author(where: Location | None = None) -> str:
    """The author recorded when none is given.

    $LAKEVER_AUTHOR; else, for a lake on S3 (`where`), the caller's identity
    (STS GetCallerIdentity, asked once per set of credentials); else the OS
    user.
    """
    env = os.environ.get(ENV_AUTHOR)
    if env:
        return env
    if where is not None and not where.is_local:
        from lakever.access import caller

        arn = caller(where)
        if arn:
            return arn
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: fixed at creation.

    Attributes:
        id: unique id of this incarnation of the name: a dataset deleted and
            created again under the same name gets a new one (None for
            datasets made before lakever recorded it).
        edits: how updates and deletes are written: "merge-on-read" (deletion
            vectors) or "copy-on-write" (files rewritten; datasets made before
            lakever recorded it keep this).
        origin: where its first commit came from, for a clone or a merge of
            datasets (sources, their ids and commits); None otherwise.
        creating: while a clone or merge builds it, the builder's claim
            (`lakever._claims`): the dataset is not visible yet.
    """

    name: str
    project: str | None
    description: str
    tags: tuple[str, ...]
    creator: str
    created_at: datetime
    classes: tuple[str, ...]
    id: str | None = None
    edits: str = "copy-on-write"
    origin: Mapping[str, Any] | None = None
    creating: Mapping[str, Any] | None = None

    @classmethod
    def new(
        cls,
        name: str,
        *,
        project: str | None,
        description: str,
        tags: tuple[str, ...],
        creator: str,
        classes: tuple[str, ...],
        edits: str = "merge-on-read",
    ) -> DatasetInfo:
        """The info of a dataset about to be created, with a fresh id."""
        return cls(
            name, project, description, tags, creator, now_utc(), classes, uuid.uuid4().hex, edits
        )

    @property
    def identity(self) -> str:
        """What tells this incarnation from any other of the same name."""
        return self.id or self.created_at.isoformat()

    def to_json(self) -> bytes:
        """Serialise for dataset.json."""
        return json.dumps(
            {
                "format": 1,
                "id": self.id,
                "name": self.name,
                "project": self.project,
                "description": self.description,
                "tags": list(self.tags),
                "creator": self.creator,
                "created_at": self.created_at.isoformat(),
                "classes": list(self.classes),
                "edits": self.edits,
                **({"origin": dict(self.origin)} if self.origin else {}),
                **({"creating": dict(self.creating)} if self.creating else {}),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> DatasetInfo:
        """Parse dataset.json."""
        d = json.loads(data)
        return cls(
            name=d["name"],
            project=d.get("project"),
            description=d.get("description", ""),
            tags=tuple(d.get("tags", ())),
            creator=d.get("creator", ""),
            created_at=datetime.fromisoformat(d["created_at"]),
            classes=tuple(d.get("classes", ())),
            id=d.get("id"),
            edits=d.get("edits", "copy-on-write"),
            origin=d.get("origin"),
            creating=d.get("creating"),
        )
