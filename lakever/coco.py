"""COCO import and export.

Mapping (COCO → lakever):

- ``images``: ``id`` → ``frame_id`` (as text); ``file_name`` → ``uri`` (joined
  with `images_root` when given; then a ``file_name`` that would leave it, such
  as ``../../etc/passwd`` or ``/etc/shadow``, is rejected with rule
  ``unsafe_path``; without `images_root` the ``uri`` is the name as given) and
  kept as the ``file_name`` column;
  ``width``, ``height``; ``video_id`` → ``group_id`` and ``frame_index`` →
  ``sequence`` when present (the frame is then a ``video_frame``); any other
  field → a column of the same name.
- ``annotations``: ``id`` → ``label_id`` (as text), ``image_id`` → ``frame_id``,
  the category's name → ``cls``, ``bbox`` → ``x, y, w, h`` (COCO's convention,
  kept as is: top-left corner and size, in pixels); ``segmentation`` (polygons
  or RLE) → a JSON text column; ``area``, ``iscrowd``, ``score``,
  ``track_id``, ``keypoints`` and any other field → columns of the same name
  (lists and objects other than lists of numbers as JSON text).
- ``categories``: their names, in file order, are the class map; two
  categories sharing an id under different names refuse the file
  (`ValidationError`). The records themselves (ids, supercategory, keypoint
  names), ``info``, ``licenses`` and any top-level key COCO does not define
  (kwcoco's ``videos``, ``tracks``, ...) are kept in ``_lakever/coco.json`` so
  an export gives them back.

Export inverts all of it; `pycocotools.coco.COCO` loads the result.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from lakever.errors import InvalidInputError, RowError, SourceNotFoundError, ValidationError
from lakever.schema import FRAMES, LABELS, core_columns
from lakever.storage import user_location

if TYPE_CHECKING:
    from lakever.dataset import Dataset
    from lakever.view import TableReader

_META = ("_lakever", "coco.json")
_IMAGE_CORE = {"id", "file_name", "width", "height", "video_id", "frame_index"}
_ANN_CORE = {"id", "image_id", "category_id", "bbox"}
_JSON_ALWAYS = {"segmentation"}
#: Top-level keys with a meaning of their own; any other is kept as it is.
_DOC_KEYS = {"images", "annotations", "categories", "info", "licenses"}


def read_json(source: str | os.PathLike[str], options: Mapping[str, str], *, what: str) -> Any:
    """Load a JSON file (local or s3://); `what` names it in errors."""
    loc = user_location(source, options)
    try:
        return json.loads(loc.read_bytes())
    except FileNotFoundError:
        raise SourceNotFoundError(f"no {what} at {loc.uri!r}: check the path") from None
    except ValueError as exc:
        raise InvalidInputError(f"{loc.uri!r} is not valid JSON: {exc}") from exc


def read_document(source: str, options: Mapping[str, str]) -> dict[str, Any]:
    """Load a COCO annotation file (local or s3://)."""
    doc = read_json(source, options, what="COCO file")
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise InvalidInputError(
            f"{source!r} is not a COCO annotation file: it needs 'images', 'annotations' "
            "and 'categories' lists"
        )
    for key in ("annotations", "categories"):
        if not isinstance(doc.get(key, []), list):
            raise InvalidInputError(f"{source!r}: '{key}' must be a list")
    return doc


def category_names(doc: Mapping[str, Any]) -> list[str]:
    """The class map a COCO file implies: its category names, in file order.

    Raises:
        InvalidInputError: a category has no name.
        ValidationError: two categories share an id under different names (an
            annotation of that id could be either; nothing is guessed).
    """
    names = []
    by_id: dict[Any, str] = {}
    clashes: list[RowError] = []
    for cat in doc.get("categories", []):
        if not isinstance(cat, Mapping) or not isinstance(cat.get("name"), str):
            raise InvalidInputError(f"a COCO category needs a 'name': {cat!r:.80}")
        name, cid = cat["name"], cat.get("id")
        other = by_id.setdefault(cid, name)
        if other != name:
            detail = (
                f"category id {cid!r} is given to both {other!r} and {name!r}; annotations "
                "of that id could be either: give each category its own id"
            )
            clashes.append(RowError("duplicate_category_id", str(cid), "id", [other, name], detail))
        if name not in names:
            names.append(name)
    if clashes:
        raise ValidationError("categories", clashes)
    return names


# -- metadata kept beside the dataset ----------------------------------------------------


def load_meta(ds: Dataset) -> dict[str, Any]:
    """The COCO records kept for export ({} when none were imported)."""
    data = ds.root.child(*_META).read_or_none()
    return {} if data is None else dict(json.loads(data))


def remember(
    ds: Dataset, doc: Mapping[str, Any], json_columns: Mapping[str, Iterable[str]]
) -> None:
    """Merge a file's categories, info, licenses and JSON columns into the kept records.

    Raises:
        InvalidInputError: a category name is kept with another id.
    """
    meta = load_meta(ds)
    known = {c["name"]: c for c in meta.get("categories", [])}
    for cat in doc.get("categories", []):
        old = known.get(cat["name"])
        if old is not None and old.get("id") != cat.get("id"):
            raise InvalidInputError(
                f"category {cat['name']!r} has id {cat.get('id')!r} in this file but "
                f"{old.get('id')!r} in dataset {ds.name!r}; renumber the file's categories"
            )
        known.setdefault(cat["name"], dict(cat))
    meta["categories"] = list(known.values())
    for key in ("info", "licenses"):
        if key in doc and key not in meta:
            meta[key] = doc[key]
    # Keys COCO does not define (kwcoco's videos, tracks, ...) come back on export.
    kept = meta.setdefault("top_level", {})
    for key, value in doc.items():
        if key not in _DOC_KEYS and key not in kept:
            kept[key] = value
    columns = meta.setdefault("json_columns", {})
    for table, names in json_columns.items():
        columns[table] = sorted(set(columns.get(table, [])) | set(names))
    ds.root.child(*_META).put(json.dumps(meta, sort_keys=True).encode())


def category_ids(classes: Sequence[str], meta: Mapping[str, Any]) -> dict[str, int]:
    """Class name → COCO category id: the imported ids, then fresh ones in class order."""
    ids = {c["name"]: int(c["id"]) for c in meta.get("categories", []) if "id" in c}
    nxt = max(ids.values(), default=0) + 1
    for name in classes:
        if name not in ids:
            ids[name] = nxt
            nxt += 1
    return ids


# -- import ----------------------------------------------------------------------------


#: A ``file_name`` that would leave `images_root` once joined to it: absolute,
#: a ``..`` segment, a backslash or a scheme. Rejected with rule ``unsafe_path``.
UNSAFE_FILE_NAME = pl.col("file_name").str.starts_with("/") | pl.col("file_name").str.contains(
    r"(^|/)\.\.(/|$)|\\|://"
)
UNSAFE_DETAIL = (
    "file_name must be a relative path inside images_root: no leading '/', '..' "
    "segment, backslash or scheme"
)


def frames_frame(doc: Mapping[str, Any], images_root: str | None) -> tuple[pl.DataFrame, set[str]]:
    """The frames rows of a COCO file, and the columns held as JSON text."""
    images = doc["images"]
    get = _getter(images)
    file_names = get("file_name")
    root = images_root.rstrip("/") if images_root else None
    uri = [None if f is None else (posixpath.join(root, f) if root else f) for f in file_names]
    video = get("video_id")
    has_video = any(v is not None for v in video)
    cols: dict[str, Any] = {
        "frame_id": _ids(get("id")),
        "uri": uri,
        "media_type": ["video_frame" if v is not None else "image" for v in video],
        "width": get("width"),
        "height": get("height"),
    }
    if has_video:
        cols["group_id"] = _ids(video)
        cols["sequence"] = get("frame_index")
    cols["file_name"] = file_names
    extra, as_json = _extra_columns(images, _IMAGE_CORE)
    return _frame({**cols, **extra}), as_json


def labels_frame(doc: Mapping[str, Any]) -> tuple[pl.DataFrame, set[str]]:
    """The labels rows of a COCO file, and the columns held as JSON text."""
    anns = doc.get("annotations", [])
    names = {c.get("id"): c["name"] for c in doc.get("categories", [])}
    get = _getter(anns)
    cols = {"label_id": _ids(get("id")), **_boxes(get, names)}
    extra, as_json = _extra_columns(anns, _ANN_CORE)
    return _frame({**cols, **extra}), as_json


def results_frame(results: Sequence[Mapping[str, Any]], ids: Mapping[int, str]) -> pl.DataFrame:
    """Prediction rows of a COCO results (detections) list; label ids are list positions."""
    get = _getter(results)
    cols = {
        "label_id": [str(i) for i in range(len(results))],
        **_boxes(get, ids),
        "confidence": get("score"),
    }
    extra, _ = _extra_columns(results, {"image_id", "category_id", "bbox", "score", "id"})
    return _frame({**cols, **extra})


def _boxes(get: Any, names: Mapping[Any, str]) -> dict[str, list[Any]]:
    """frame_id, cls (an unknown category id as text) and x, y, w, h of annotation-like records."""
    boxes = [b if isinstance(b, list) and len(b) == 4 else [None] * 4 for b in get("bbox")]
    return {
        "frame_id": _ids(get("image_id")),
        "cls": [names.get(c, None if c is None else str(c)) for c in get("category_id")],
        "x": [b[0] for b in boxes],
        "y": [b[1] for b in boxes],
        "w": [b[2] for b in boxes],
        "h": [b[3] for b in boxes],
    }


def _getter(records: Sequence[Any]) -> Any:
    bad = next((r for r in records if not isinstance(r, Mapping)), None)
    if bad is not None:
        raise InvalidInputError(f"COCO records must be objects, found {bad!r:.80}")
    return lambda key: [r.get(key) for r in records]


def _ids(values: list[Any]) -> list[str | None]:
    return [None if v is None else str(v) for v in values]


def _extra_columns(
    records: Sequence[Mapping[str, Any]], core: set[str]
) -> tuple[dict[str, list[Any]], set[str]]:
    """Every other field as a column; nested values (except lists of numbers) as JSON text."""
    names: dict[str, None] = {}
    for r in records:
        for k in r:
            if k not in core:
                names.setdefault(k)
    out: dict[str, list[Any]] = {}
    as_json: set[str] = set()
    for name in names:
        values = [r.get(name) for r in records]
        if name in _JSON_ALWAYS or not _plain(values):
            out[name] = [None if v is None else json.dumps(v) for v in values]
            as_json.add(name)
        else:
            out[name] = values
    return out, as_json


def _plain(values: list[Any]) -> bool:
    """Scalars of one kind, or lists of numbers: what a typed column holds exactly."""
    kinds = set()
    for v in values:
        if v is None:
            continue
        if isinstance(v, list):
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                return False
            kinds.add("list")
        elif isinstance(v, bool):
            kinds.add("bool")
        elif isinstance(v, (int, float)):
            kinds.add("number")
        elif isinstance(v, str):
            kinds.add("str")
        else:
            return False
    return len(kinds) <= 1


def _frame(cols: Mapping[str, list[Any]]) -> pl.DataFrame:
    series = []
    for name, values in cols.items():
        try:
            series.append(pl.Series(name, values, strict=False))
        except (TypeError, ValueError, pl.exceptions.PolarsError):
            series.append(pl.Series(name, [None if v is None else str(v) for v in values]))
    return pl.DataFrame(series)


# -- export ----------------------------------------------------------------------------


def export_document(reader: TableReader) -> dict[str, Any]:
    """The COCO document of a dataset version."""
    ds = reader._dataset
    meta = load_meta(ds)
    json_cols = meta.get("json_columns", {})
    ids = category_ids(reader.classes, meta)
    known = {c["name"]: c for c in meta.get("categories", [])}
    categories = [
        dict(known.get(name, {"name": name, "supercategory": ""}), id=ids[name])
        for name in reader.classes
    ]
    images = _images(reader.read(FRAMES), set(json_cols.get(FRAMES, [])))
    annotations = _annotations(reader.read(LABELS), ids, set(json_cols.get(LABELS, [])))
    doc: dict[str, Any] = {}
    for key in ("info", "licenses"):
        if key in meta:
            doc[key] = meta[key]
    doc.update(meta.get("top_level", {}))
    doc.update(images=images, annotations=annotations, categories=categories)
    return doc


def _coco_id(value: str) -> int | str:
    return int(value) if value.isdigit() and (value == "0" or value[0] != "0") else value


def _images(frames: pl.DataFrame, as_json: set[str]) -> list[dict[str, Any]]:
    core = {c.name for c in core_columns("frames")}
    extra = [c for c in frames.columns if c not in core and c != "file_name"]
    out = []
    for r in frames.sort("frame_id").iter_rows(named=True):
        image: dict[str, Any] = {
            "id": _coco_id(r["frame_id"]),
            "file_name": r.get("file_name") or posixpath.basename(r["uri"]),
            "width": r["width"],
            "height": r["height"],
        }
        if r.get("group_id") is not None:
            image["video_id"] = _coco_id(r["group_id"])
        if r.get("sequence") is not None:
            image["frame_index"] = r["sequence"]
        _put_extra(image, r, extra, as_json)
        out.append(image)
    out.sort(key=_sort_key)
    return out


def _annotations(
    labels: pl.DataFrame, ids: Mapping[str, int], as_json: set[str]
) -> list[dict[str, Any]]:
    core = {c.name for c in core_columns("labels")}
    extra = [c for c in labels.columns if c not in core]
    out = []
    for r in labels.iter_rows(named=True):
        ann: dict[str, Any] = {
            "id": _coco_id(r["label_id"]),
            "image_id": _coco_id(r["frame_id"]),
            "category_id": ids[r["cls"]],
            "bbox": [r["x"], r["y"], r["w"], r["h"]],
        }
        _put_extra(ann, r, extra, as_json | _JSON_ALWAYS)
        ann.setdefault("area", r["w"] * r["h"])
        ann.setdefault("iscrowd", 0)
        out.append(ann)
    out.sort(key=_sort_key)
    return out


def _put_extra(
    record: dict[str, Any], row: Mapping[str, Any], columns: list[str], as_json: set[str]
) -> None:
    for c in columns:
        value = row[c]
        if value is None:
            continue
        record[c] = json.loads(value) if c in as_json and isinstance(value, str) else value


def _sort_key(record: Mapping[str, Any]) -> tuple[int, Any]:
    value = record["id"]
    return (0, value) if isinstance(value, int) else (1, str(value))
