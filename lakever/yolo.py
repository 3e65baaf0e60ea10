"""YOLO import and export (the Ultralytics / Darknet text format).

A YOLO dataset is a folder with ``images/`` and ``labels/`` side by side
(sub-folders such as ``train/`` and ``val/`` are kept), one ``.txt`` per image
with a line ``class x_center y_center width height`` per box, normalised to
[0, 1] by the image size, and a ``data.yaml`` whose ``names`` list (or
index → name map) gives the classes.

Import: each image is a frame whose ``frame_id`` is its path under
``images/`` without the extension (``train/000123``), with its size read from
the image header. Each line is a label ``<frame_id>:<line number>`` with the box
turned into lakever's pixels (top-left corner and size). A class index outside
the names becomes that number as ``cls`` and is rejected as an unknown class;
a malformed line is rejected as a bad box.

Export makes a folder Ultralytics trains on, named after the images: for each
frame, ``labels/<name>.txt`` (empty when it has no labels) and, when its image
is a local file, ``images/<name><ext>``, a symbolic link to it (media are never
copied). ``<name>`` is the image's path without extension: its COCO
``file_name``, else its path under an ``images/`` folder (a YOLO import), else
its file name; each part is encoded by `lakever.filenames.encode` (so no name
leaves the folder), and a name two frames share gets ``~<frame id>`` added.
``data.yaml`` holds ``path`` (the folder's absolute path or URI: Ultralytics
reads a relative one against its own datasets folder), ``train`` and ``val``
(``images``)
and ``names`` in class-map order; ``images.txt`` lists each frame's image URI
in label-file order; ``frames.json`` maps each name to its frame id, so
importing the export gives back the same frame ids and labels.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl
import yaml

from lakever import filenames
from lakever.errors import InvalidInputError
from lakever.schema import FRAMES, LABELS, TableKind, core_columns
from lakever.storage import Location, user_location

if TYPE_CHECKING:
    from lakever.view import TableReader

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
#: The export's map from label-file name to frame id (read back by import).
FRAME_IDS = "frames.json"


def _root(root: str, options: Mapping[str, str]) -> Location:
    return user_location(root, options)


def read_names(root: str, options: Mapping[str, str]) -> list[str] | None:
    """The class names of `root/data.yaml` (or the first ``*.yaml`` there), if any."""
    loc = _root(root, options)
    candidates = ["data.yaml", *sorted(n for n in loc.list_names() if n.endswith(".yaml"))]
    for name in candidates:
        data = loc.child(name).read_or_none()
        if data is None:
            continue
        try:
            doc = yaml.safe_load(data)
        except yaml.YAMLError as exc:
            raise InvalidInputError(f"{loc.child(name).uri} is not valid YAML: {exc}") from exc
        names = doc.get("names") if isinstance(doc, dict) else None
        if isinstance(names, dict):
            return [str(names[k]) for k in sorted(names, key=int)]
        if isinstance(names, list):
            return [str(n) for n in names]
    return None


def _relative(files: Sequence[str], base: str) -> dict[str, str]:
    """Stem path under `base` (no extension) -> full path."""
    out = {}
    for path in files:
        rel = posixpath.relpath(path, base)
        out[posixpath.splitext(rel)[0]] = path
    return out


def read_dataset(
    root: str, classes: Sequence[str], options: Mapping[str, str]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The frames and labels rows of a YOLO folder."""
    from PIL import Image  # only imports need it

    loc = _root(root, options)
    fs = loc.fs
    images_dir = posixpath.join(loc.path, "images")
    labels_dir = posixpath.join(loc.path, "labels")
    if not fs.isdir(images_dir):
        raise InvalidInputError(f"{loc.uri} has no images/ folder: not a YOLO dataset")
    images = _relative(
        sorted(p for p in fs.find(images_dir) if p.lower().endswith(IMAGE_SUFFIXES)), images_dir
    )
    ids = _frame_ids(loc)
    texts = (
        _relative(sorted(p for p in fs.find(labels_dir) if p.endswith(".txt")), labels_dir)
        if fs.isdir(labels_dir)
        else {}
    )
    scheme = "" if loc.is_local else loc.uri.split("://", 1)[0] + "://"
    frames: list[dict[str, Any]] = []
    sizes: dict[str, tuple[int, int]] = {}
    for frame_id, path in images.items():
        with fs.open(path, "rb") as fh:
            try:
                width, height = Image.open(fh).size
            except OSError as exc:
                raise InvalidInputError(f"cannot read the size of image {path!r}: {exc}") from exc
        sizes[frame_id] = (width, height)
        frames.append(
            {
                "frame_id": ids.get(frame_id, frame_id),
                "uri": scheme + (os.path.realpath(path) if loc.is_local else path),
                "media_type": "image",
                "width": width,
                "height": height,
            }
        )
    rows: list[dict[str, Any]] = []
    for frame_id, path in texts.items():
        width, height = sizes.get(frame_id, (0, 0))
        lines = fs.cat_file(path).decode().splitlines()
        for i, line in enumerate(lines):
            if line.strip():
                rows.append(_label(ids.get(frame_id, frame_id), i, line, classes, width, height))
    return pl.DataFrame(frames, schema=_required("frames")), pl.DataFrame(
        rows, schema=_required("labels")
    )


def _frame_ids(loc: Location) -> dict[str, str]:
    """Name -> frame id from a lakever export's ``frames.json`` ({} for other folders)."""
    data = loc.child(FRAME_IDS).read_or_none()
    if data is None:
        return {}
    try:
        ids = json.loads(data)
    except ValueError as exc:
        raise InvalidInputError(f"{loc.child(FRAME_IDS).uri} is not valid JSON: {exc}") from exc
    if not isinstance(ids, dict):
        raise InvalidInputError(f"{loc.child(FRAME_IDS).uri} must map names to frame ids")
    return {str(k): str(v) for k, v in ids.items()}


def _required(kind: TableKind) -> dict[str, pl.DataType]:
    """The required core columns of a table: what a YOLO folder fills."""
    return {c.name: c.dtype for c in core_columns(kind) if c.required}


def _label(
    frame_id: str, index: int, line: str, classes: Sequence[str], width: int, height: int
) -> dict[str, Any]:
    parts = line.split()
    nan = float("nan")
    try:
        cls_index = int(parts[0])
        cx, cy, w, h = (float(v) for v in parts[1:5])
        if len(parts) != 5:
            raise ValueError
    except (ValueError, IndexError):
        cls_index, cx, cy, w, h = -1, nan, nan, nan, nan  # rejected as a bad box
    cls = classes[cls_index] if 0 <= cls_index < len(classes) else parts[0] if parts else ""
    return {
        "label_id": f"{frame_id}:{index}",
        "frame_id": frame_id,
        "cls": cls,
        "x": (cx - w / 2) * width,
        "y": (cy - h / 2) * height,
        "w": w * width,
        "h": h * height,
    }


def export_files(
    reader: TableReader, folder: str
) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]], int]:
    """A version as a YOLO folder at `folder`: its files, image links and frame count.

    Returns (path in the folder, bytes) pairs, (path in the folder, local image
    path) links, and the number of frames; see the module doc for the layout.
    """
    classes = list(reader.classes)
    index = {c: i for i, c in enumerate(classes)}
    frames = reader.read(FRAMES).sort("frame_id")
    labels = reader.read(LABELS).join(
        frames.select("frame_id", "width", "height"), on="frame_id", how="inner"
    )
    lines = labels.select(
        "frame_id",
        pl.col("cls").replace_strict(index, return_dtype=pl.Int64).alias("c"),
        ((pl.col("x") + pl.col("w") / 2) / pl.col("width")).alias("cx"),
        ((pl.col("y") + pl.col("h") / 2) / pl.col("height")).alias("cy"),
        (pl.col("w") / pl.col("width")).alias("nw"),
        (pl.col("h") / pl.col("height")).alias("nh"),
        "label_id",
    ).sort("frame_id", "label_id")
    by_frame: dict[str, list[str]] = {}
    for f, c, cx, cy, nw, nh, _ in lines.iter_rows():
        by_frame.setdefault(f, []).append(f"{c} {cx!r} {cy!r} {nw!r} {nh!r}")
    files: list[tuple[str, bytes]] = []
    links: list[tuple[str, str]] = []
    ids: dict[str, str] = {}
    file_names = frames["file_name"] if "file_name" in frames.columns else None
    for i, (frame_id, uri) in enumerate(frames.select("frame_id", "uri").iter_rows()):
        source = file_names[i] if file_names is not None and file_names[i] else uri
        name, ext = _image_name(source, frame_id, taken=ids)
        ids[name] = frame_id
        text = "".join(line + "\n" for line in by_frame.get(frame_id, []))
        files.append((f"labels/{name}.txt", text.encode()))
        if "://" not in uri and os.path.isfile(uri):
            links.append((f"images/{name}{ext}", uri))
    names = {i: c for i, c in enumerate(classes)}
    data = {"path": folder, "train": "images", "val": "images", "nc": len(classes), "names": names}
    files.append(("data.yaml", yaml.safe_dump(data, sort_keys=False).encode()))
    files.append(("images.txt", "".join(u + "\n" for u in frames["uri"].to_list()).encode()))
    files.append((FRAME_IDS, json.dumps(ids, indent=1, ensure_ascii=False).encode()))
    return files, links, frames.height


def _image_name(source: str, frame_id: str, *, taken: Mapping[str, str]) -> tuple[str, str]:
    """The safe, unique name (no extension) of a frame's label file, and its image's extension.

    `source` is the frame's COCO ``file_name`` (relative: its folders are
    kept) or its URI (the path under ``images/`` for a YOLO layout, else the
    file name).
    """
    path = source.split("://", 1)[-1]
    if "/images/" in f"/{path}":
        path = f"/{path}".rsplit("/images/", 1)[1]
    elif "://" in source or path.startswith("/"):
        path = posixpath.basename(path)
    stem, ext = posixpath.splitext(path)
    parts = [p for p in stem.split("/") if p] or [frame_id]
    name = "/".join(filenames.encode(p, what="image name") for p in parts)
    if name in taken:
        base, n = f"{name}~{filenames.encode(frame_id, what='frame id')}", 1
        name = base
        while name in taken:
            n += 1
            name = f"{base}~{n}"
    return name, ext if ext.lower() in IMAGE_SUFFIXES else ".jpg"
