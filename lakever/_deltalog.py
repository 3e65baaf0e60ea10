"""Our own reading of a Delta table's log: the live files of a version, with their vectors.

deltalake's `get_add_actions()` hides deletion vectors and `deletion_vectors()`
returns materialised masks without the descriptors, but a merge-on-read
writer needs the exact `add` action of every file it marks (to remove it with
its old vector and add it back with the new one), and key lookups need each
file's statistics. So this module replays the log itself: the newest
checkpoint at or before the version (classic single- or multi-part Parquet),
then the JSON commits after it.

Versions never change, so the file set of a version is cached per process
and the next version is derived from the previous one by reading one JSON
commit.

Deletion vectors are read here too (`read_vector`): inline (`i`), relative
(`u`, a `deletion_vector_<uuid>.bin` file) and absolute (`p`) storage, in the
format `shared/DESIGN.md` describes: magic 1681511377 (int32 LE) followed by a
portable 64-bit Roaring bitmap.
"""

from __future__ import annotations

import json
import re
import struct
import threading
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyroaring import BitMap64

from lakever.errors import StorageError
from lakever.storage import Location

#: First four bytes (int32 little-endian) of a serialised deletion vector.
DV_MAGIC = 1681511377

_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint(?:\.(\d+)\.(\d+))?\.parquet$")


@dataclass(frozen=True)
class TableFiles:
    """The live data files of one table version.

    Attributes:
        version: the table version.
        adds: file path (relative to the table) -> its `add` action, as in the log.
        reader_features: the protocol's reader features at this version.
        configuration: the table properties at this version.
        metadata: the raw `metaData` action in force at this version.
        protocol: the `protocol` action in force (fields without a value left out).
    """

    version: int
    adds: Mapping[str, dict[str, Any]]
    reader_features: frozenset[str]
    configuration: Mapping[str, str]
    metadata: Mapping[str, Any]
    protocol: Mapping[str, Any] = field(default_factory=dict)

    def masked(self) -> list[str]:
        """Paths of the files that carry a deletion vector, sorted."""
        return sorted(p for p, a in self.adds.items() if a.get("deletionVector"))


_CACHE_SIZE = 64
_cache: OrderedDict[tuple[str, int, str, str], TableFiles] = OrderedDict()
_lock = threading.Lock()


def _cache_key(loc: Location, version: int) -> tuple[str, int, str, str]:
    return (loc.uri, version, loc.fingerprint, loc.scope)


def version_file(version: int) -> str:
    """The log file name of a commit."""
    return f"{version:020d}.json"


def latest_version(loc: Location) -> int | None:
    """The newest committed version of a table, from one listing of its log (None: no table)."""
    versions = [
        int(name[:20])
        for name in loc.child("_delta_log").list_names()
        if len(name) == 25 and name.endswith(".json") and name[:20].isdigit()
    ]
    return max(versions) if versions else None


def files_at(loc: Location, version: int) -> TableFiles:
    """The live files of `loc` at `version`, replayed from the log (cached)."""
    with _lock:
        hit = _cache.get(_cache_key(loc, version))
        prev = _cache.get(_cache_key(loc, version - 1))
    if hit is not None:
        return hit
    log_dir = loc.child("_delta_log")
    if prev is not None:
        state = _State.from_files(prev)
        _apply_commits(state, loc, [version])
    else:
        state, start = _from_checkpoint(log_dir, version)
        _apply_commits(state, loc, range(start + 1, version + 1))
    files = state.freeze(version)
    with _lock:
        _cache[_cache_key(loc, version)] = files
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return files


class _State:
    def __init__(self) -> None:
        self.adds: dict[str, dict[str, Any]] = {}
        self.reader_features: frozenset[str] = frozenset()
        self.configuration: dict[str, str] = {}
        self.metadata: dict[str, Any] = {}
        self.protocol: dict[str, Any] = {}

    @classmethod
    def from_files(cls, files: TableFiles) -> _State:
        state = cls()
        state.adds = dict(files.adds)
        state.reader_features = files.reader_features
        state.configuration = dict(files.configuration)
        state.metadata = dict(files.metadata)
        state.protocol = dict(files.protocol)
        return state

    def apply(self, action: Mapping[str, Any]) -> None:
        if "add" in action and action["add"] is not None:
            add = _normalise(action["add"])
            self.adds[add["path"]] = add
        elif "remove" in action and action["remove"] is not None:
            self.adds.pop(action["remove"]["path"], None)
        elif "protocol" in action and action["protocol"] is not None:
            proto = {k: v for k, v in dict(action["protocol"]).items() if v is not None}
            for name in ("readerFeatures", "writerFeatures"):
                if name in proto:
                    proto[name] = list(proto[name])
            self.protocol = proto
            self.reader_features = frozenset(proto.get("readerFeatures") or ())
        elif "metaData" in action and action["metaData"] is not None:
            meta = dict(action["metaData"])
            meta["configuration"] = _as_dict(meta.get("configuration"))
            fmt = dict(meta.get("format") or {"provider": "parquet"})
            fmt["options"] = _as_dict(fmt.get("options"))
            meta["format"] = fmt
            self.metadata = meta
            self.configuration = meta["configuration"]

    def freeze(self, version: int) -> TableFiles:
        return TableFiles(
            version,
            self.adds,
            self.reader_features,
            self.configuration,
            self.metadata,
            self.protocol,
        )


def _as_dict(value: Any) -> dict[str, Any]:
    """A Delta map as a dict (Parquet checkpoints give maps as lists of pairs)."""
    return {} if value is None else dict(value)


def _normalise(add: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in add.items() if v is not None}
    out["partitionValues"] = _as_dict(add.get("partitionValues"))
    if "tags" in out:
        out["tags"] = _as_dict(out["tags"])
    # A path in the log is URL-encoded; keep it as written, it is also our key.
    return out


def _from_checkpoint(log_dir: Location, version: int) -> tuple[_State, int]:
    """State at the newest checkpoint at or before `version`, and that checkpoint's version."""
    state = _State()
    parts = _checkpoint_parts(log_dir, version)
    if not parts:
        return state, -1
    cp_version = int(parts[0].name[:20])
    for part in parts:
        try:
            table = pq.read_table(
                pa.BufferReader(_arrow_owned(part.read_bytes())),
                columns=["add", "protocol", "metaData"],
                use_threads=False,  # a checkpoint is small; no pool work to outlive us
            )
        except Exception as exc:
            raise StorageError(f"cannot read checkpoint {part.uri}: {exc}") from exc
        for column in ("protocol", "metaData", "add"):
            for value in table.column(column).to_pylist():
                if value is not None:
                    state.apply({column: value})
    return state, cp_version


def _arrow_owned(data: bytes) -> pa.Buffer:
    """A copy of `data` in memory that Arrow owns, not Python.

    pyarrow's Parquet reader leaves a task on one of its pool threads that
    holds the source until the thread drops it, which may happen during
    interpreter shutdown. Freeing a Python-owned buffer there takes the GIL,
    and the thread is torn down inside a C++ destructor: the process aborts
    (SIGABRT, "terminate called without an active exception") after its work
    is done, in some runs (apache/arrow#34314). Freeing Arrow's memory needs
    no GIL.
    """
    sink = pa.BufferOutputStream()
    sink.write(data)
    return sink.getvalue()


def _checkpoint_parts(log_dir: Location, version: int) -> list[Location]:
    """The files of the newest complete checkpoint at or before `version`."""
    hint = log_dir.child("_last_checkpoint").read_or_none()
    if hint is not None:
        try:
            last = json.loads(hint)
            cp, count = int(last["version"]), last.get("parts")
        except (ValueError, KeyError, TypeError):
            cp, count = -1, None
        if 0 <= cp <= version and count is None:
            single = log_dir.child(f"{cp:020d}.checkpoint.parquet")
            if single.exists():
                return [single]
    found: dict[tuple[int, int], set[int]] = {}
    for name in log_dir.list_names():
        m = _CHECKPOINT.match(name)
        if not m or int(m.group(1)) > version:
            continue
        total = int(m.group(3) or 1)
        found.setdefault((int(m.group(1)), total), set()).add(int(m.group(2) or 1))
    complete = [key for key, got in found.items() if len(got) == key[1]]
    if not complete:
        return []
    cp, total = max(complete)
    if total == 1:
        return [log_dir.child(f"{cp:020d}.checkpoint.parquet")]
    return [
        log_dir.child(f"{cp:020d}.checkpoint.{i:010d}.{total:010d}.parquet")
        for i in range(1, total + 1)
    ]


def _apply_commits(state: _State, loc: Location, versions: Iterable[int]) -> None:
    for lines in commit_lines(loc, versions).values():
        actions = [json.loads(line) for line in lines if line.strip()]
        # A commit may remove a file and add it back with a new deletion vector;
        # removes first, so the order of the lines does not matter.
        for action in actions:
            if action.get("remove") is not None:
                state.apply(action)
        for action in actions:
            if action.get("remove") is None:
                state.apply(action)


def commit_lines(loc: Location, versions: Iterable[int]) -> dict[int, list[bytes]]:
    """The raw action lines of each commit's JSON log entry, by version."""
    log_dir = loc.child("_delta_log")
    wanted = {v: log_dir.child(version_file(v)) for v in versions}
    if not wanted:
        return {}
    blobs = log_dir.cat_many(list(wanted.values()))
    out = {}
    for v, where in wanted.items():
        data = blobs.get(where.uri)
        if data is None:
            raise StorageError(f"Delta log entry {where.uri} is missing")
        out[v] = data.splitlines()
    return out


# -- statistics ----------------------------------------------------------------------


def stats(add: Mapping[str, Any]) -> dict[str, Any]:
    """The parsed statistics of an `add` action ({} when it has none)."""
    raw = add.get("stats")
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def bounds(add: Mapping[str, Any], column: str) -> tuple[Any, Any] | None:
    """(min, max) of a column in a file, or None when the statistics do not say."""
    s = stats(add)
    lo = (s.get("minValues") or {}).get(column)
    hi = (s.get("maxValues") or {}).get(column)
    if lo is None or hi is None:
        return None
    return lo, hi


def identity(add: Mapping[str, Any]) -> tuple[str, str | None]:
    """What tells one logical file from another: its path and its vector's unique id."""
    dv = add.get("deletionVector")
    if not dv:
        return (str(add["path"]), None)
    return (str(add["path"]), f"{dv['storageType']}{dv['pathOrInlineDv']}@{dv.get('offset')}")


def num_records(add: Mapping[str, Any]) -> int | None:
    """Physical rows in the file (deleted ones included), from its statistics."""
    n = stats(add).get("numRecords")
    return int(n) if n is not None else None


# -- deletion vectors --------------------------------------------------------------

_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_INDEX = {c: i for i, c in enumerate(_Z85)}


def z85_encode(data: bytes) -> str:
    """Z85 (the Delta protocol's base85 alphabet) of data whose length is a multiple of 4."""
    if len(data) % 4:
        raise ValueError("z85 needs a multiple of 4 bytes")
    out = []
    for (word,) in struct.iter_unpack(">I", data):
        chars = []
        for _ in range(5):
            word, r = divmod(word, 85)
            chars.append(_Z85[r])
        out.append("".join(reversed(chars)))
    return "".join(out)


def z85_decode(text: str) -> bytes:
    """Inverse of `z85_encode`."""
    if len(text) % 5:
        raise ValueError("z85 text length must be a multiple of 5")
    out = bytearray()
    for i in range(0, len(text), 5):
        word = 0
        for c in text[i : i + 5]:
            word = word * 85 + _Z85_INDEX[c]
        out += struct.pack(">I", word)
    return bytes(out)


def vector_path(dv: Mapping[str, Any]) -> str | None:
    """The table-relative path of a `u` vector's file (None for inline vectors)."""
    kind = dv["storageType"]
    if kind == "i":
        return None
    if kind == "p":
        return str(dv["pathOrInlineDv"])
    encoded = str(dv["pathOrInlineDv"])
    prefix, tail = encoded[:-20], encoded[-20:]
    name = f"deletion_vector_{uuid.UUID(bytes=z85_decode(tail))}.bin"
    return f"{prefix}/{name}" if prefix else name


def decode_vector(data: bytes) -> BitMap64:
    """A bitmap from the serialised bytes (magic included)."""
    (magic,) = struct.unpack("<i", data[:4])
    if magic != DV_MAGIC:
        raise StorageError(f"deletion vector has magic {magic}, expected {DV_MAGIC}")
    return BitMap64.deserialize(data[4:])


def encode_vector(rows: BitMap64) -> bytes:
    """Serialised bytes of a bitmap (magic included), as `sizeInBytes` counts them."""
    return struct.pack("<i", DV_MAGIC) + rows.serialize()


def read_vector(table: Location, dv: Mapping[str, Any]) -> BitMap64:
    """The deleted row positions a deletion-vector descriptor points at."""
    size = int(dv["sizeInBytes"])
    if dv["storageType"] == "i":
        return decode_vector(z85_decode(str(dv["pathOrInlineDv"]))[:size])
    rel = vector_path(dv)
    assert rel is not None
    where = Location(rel, table.options, table.scope) if "://" in rel else table.child(rel)
    blob = where.read_bytes()
    offset = int(dv.get("offset") or 0)
    (stored,) = struct.unpack(">i", blob[offset : offset + 4])
    data = blob[offset + 4 : offset + 4 + stored]
    (crc,) = struct.unpack(">I", blob[offset + 4 + stored : offset + 8 + stored])
    if zlib.crc32(data) != crc:
        raise StorageError(f"deletion vector in {where.uri} at offset {offset} fails its CRC")
    return decode_vector(data[:size])


def vector_file(vectors: list[bytes]) -> tuple[bytes, list[int]]:
    """The bytes of a `.bin` file holding `vectors`, and the offset of each."""
    out = bytearray(b"\x01")
    offsets = []
    for data in vectors:
        offsets.append(len(out))
        out += struct.pack(">i", len(data)) + data + struct.pack(">I", zlib.crc32(data))
    return bytes(out), offsets


def vector_id(file_uuid: uuid.UUID) -> str:
    """`pathOrInlineDv` of a `u` vector stored in the table root."""
    return z85_encode(file_uuid.bytes)
