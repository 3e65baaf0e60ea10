r"""Names that come from data, made into file names that stay inside their folder.

A frame id is whatever a vendor's COCO ``image.id`` or an upload row holds:
``../../escape``, ``/srv/x``, ``a\b``, a NUL, ``CON``, thousands of
characters. Wherever such a name becomes a file name (YOLO label files),
`encode` turns it into one path segment that is safe on POSIX file systems,
Windows and S3 keys, and `decode` gives the name back exactly:

- every character other than ASCII letters, digits and ``_ . - ~`` is
  percent-encoded as the bytes of its UTF-8 form (``/`` is ``%2F``, a space
  ``%20``, ``%`` itself ``%25``), as `urllib.parse.quote` does;
- a leading or trailing ``.`` is encoded too, so no name is ``.``, ``..``,
  hidden, or ends in a dot (which Windows drops);
- a name whose part before the first dot is one Windows reserves (``CON``,
  ``PRN``, ``AUX``, ``NUL``, ``COM0``-``COM9``, ``LPT0``-``LPT9``, any case)
  has its first character encoded (``CON`` is ``%43ON``).

`encode_path` keeps a name's ``/`` as folders when every part between them
is non-empty (YOLO's ``train/000123`` stays ``train/000123``), encoding each
part as above, so ``../../x`` becomes ``%2E%2E/%2E%2E/x``; a name with an
empty part (``/srv/x``, ``a//b``) is encoded whole, its ``/`` as ``%2F``.
`decode_path` inverts it.

Encoding is chosen over refusing because ids such as ``cam 1/000123`` are
common and harmless once encoded. Names whose encoded form passes
`MAX_ENCODED` bytes are refused (`InvalidInputError` naming the id): file
systems cap a name at 255 bytes, and a shortened name would no longer decode
to its id.
"""

from __future__ import annotations

import urllib.parse

from lakever.errors import InvalidInputError

#: The longest encoded name, in bytes (leaves room for a suffix under 255).
MAX_ENCODED = 200

_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(10)}


def encode(name: str, *, what: str = "name") -> str:
    """Return `name` as one safe file-name segment; `decode` gives it back.

    Args:
        name: the name from data (a frame id, say).
        what: what the name is, for the error message.

    Raises:
        InvalidInputError: the name is empty, not text, or too long to encode.
    """
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"a {what} must be non-empty text to name a file, got {name!r}")
    out = urllib.parse.quote(name, safe="")
    if out.startswith("."):
        out = "%2E" + out[1:]
    if out.endswith("."):
        out = out[:-1] + "%2E"
    if out.split(".", 1)[0].upper() in _RESERVED:
        out = f"%{ord(out[0]):02X}{out[1:]}"
    if len(out) > MAX_ENCODED:
        raise InvalidInputError(
            f"the {what} {name[:60]!r}{'...' if len(name) > 60 else ''} ({len(name)} characters) "
            f"is too long to name a file ({len(out)} bytes encoded, at most {MAX_ENCODED}); "
            "shorten it"
        )
    return out


def decode(segment: str) -> str:
    """Return the name `encode` turned into `segment`.

    Raises:
        InvalidInputError: `segment` is not something `encode` makes.
    """
    try:
        name = urllib.parse.unquote(segment, errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{segment!r} is not an encoded name: {exc}") from exc
    if encode(name) != segment:
        raise InvalidInputError(f"{segment!r} is not an encoded name (it encodes differently)")
    return name


def encode_path(name: str, *, what: str = "name") -> str:
    """Return `name` as a relative path of safe segments; `decode_path` gives it back.

    Raises:
        InvalidInputError: as `encode`.
    """
    parts = name.split("/") if isinstance(name, str) else [name]
    if len(parts) > 1 and all(parts):
        return "/".join(encode(p, what=what) for p in parts)
    return encode(name, what=what)


def decode_path(path: str) -> str:
    """Return the name `encode_path` turned into `path`.

    Raises:
        InvalidInputError: `path` is not something `encode_path` makes.
    """
    return "/".join(decode(p) for p in path.split("/"))
