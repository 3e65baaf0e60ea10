"""Storage: a lake URI and its options, as deltalake and fsspec each want them.

lakever keeps two kinds of object in the lake: Delta tables (read and written
by deltalake and polars) and small JSON records (commits, dataset metadata),
read and written through fsspec. `Location` turns one URI plus one dict of
storage options into both, and provides the one primitive the commit protocol
rests on: put-if-absent of a complete object.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fsspec

from lakever.errors import AccessDeniedError, InvalidInputError, StorageError

#: Environment variable naming the default lake.
ENV_URI = "LAKEVER_URI"
#: Lake used when neither an argument nor $LAKEVER_URI names one.
DEFAULT_URI = "./lakever-data"

# Storage-option keys, in deltalake's spelling (which polars shares).
AWS_ENDPOINT_URL = "AWS_ENDPOINT_URL"
AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
AWS_SESSION_TOKEN = "AWS_SESSION_TOKEN"
AWS_REGION = "AWS_REGION"
AWS_ALLOW_HTTP = "AWS_ALLOW_HTTP"

_SECRET_KEYS = {AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ACCESS_KEY_ID}


def resolve_uri(uri: str | os.PathLike[str] | None) -> str:
    """Return the lake URI to use: the argument, else $LAKEVER_URI, else ./lakever-data."""
    if uri is None:
        uri = os.environ.get(ENV_URI) or DEFAULT_URI
    text = os.fspath(uri)
    if text.startswith("file://"):
        text = urlparse(text).path
    if "://" not in text:
        return str(Path(text).expanduser().resolve())
    scheme = text.split("://", 1)[0]
    if scheme not in ("s3", "s3a"):
        raise StorageError(
            f"unsupported lake URI scheme {scheme!r} in {text!r}: use a local path, "
            "file://, or s3://bucket/prefix"
        )
    return "s3://" + text.split("://", 1)[1].rstrip("/")


def user_location(path: str | os.PathLike[str], options: Mapping[str, str]) -> Location:
    """A file or folder a user names: local paths made absolute, s3:// with the lake's options."""
    text = os.fspath(path)
    if text.startswith("file://"):
        text = urlparse(text).path
    if "://" not in text:
        return Location(str(Path(text).expanduser().absolute()).rstrip("/") or "/")
    return Location(text.rstrip("/"), options)


def redact(options: Mapping[str, str]) -> dict[str, str]:
    """Return storage options with every credential replaced by '***', for display."""
    return {k: ("***" if k.upper() in _SECRET_KEYS else v) for k, v in options.items()}


@dataclass(frozen=True)
class Location:
    """A place in the lake: a root URI plus the storage options to reach it.

    Attributes:
        uri: absolute local path or ``s3://bucket/prefix``, without trailing slash.
        options: storage options in deltalake's spelling (``AWS_ENDPOINT_URL``, ...).
        scope: what else tells apart objects at the same URI: a dataset sets its
            id here, so a dataset deleted and re-created under the same name
            never shares cached table objects with the old one.
    """

    uri: str
    options: Mapping[str, str] = field(default_factory=dict)
    scope: str = ""

    def __repr__(self) -> str:
        return f"Location({self.uri!r}, options={redact(self.options)!r})"

    @property
    def fingerprint(self) -> str:
        """A digest of the storage options (credentials included), never the secrets.

        Objects loaded through one connection are cached under this digest, so a
        connection never reads through objects another one's credentials loaded.
        On S3 the AWS environment variables, which fill the options' gaps, count
        as they stand now: a changed variable is never answered from objects
        loaded under the old one.
        """
        digest = hashlib.sha256()
        settings = sorted(self.options.items()) + list(self._environment())
        for key, value in settings:
            digest.update(f"{key}\0{value}\0".encode())
        return digest.hexdigest()[:32]

    def _environment(self) -> tuple[tuple[str, str], ...]:
        """The AWS variables that fill this location's gaps (none for a local path)."""
        if self.is_local:
            return ()
        return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))

    @property
    def is_local(self) -> bool:
        """Whether the location is on the local filesystem."""
        return "://" not in self.uri

    def child(self, *parts: str) -> Location:
        """Return the location of a path below this one.

        Raises:
            InvalidInputError: a part would leave this location (an absolute
                path, a ``..`` segment) or holds a NUL; names from data must go
                through `lakever.filenames.encode` first.
        """
        for part in parts:
            if part.startswith("/") or "\0" in part or ".." in part.split("/"):
                raise InvalidInputError(
                    f"{part!r} is not a path inside {self.uri}: it is absolute, holds a NUL "
                    "or a '..' segment"
                )
        return Location(posixpath.join(self.uri, *parts), self.options, self.scope)

    @property
    def name(self) -> str:
        """The last path segment."""
        return posixpath.basename(self.uri)

    def delta_options(self) -> dict[str, str] | None:
        """Storage options for deltalake and polars (None for local paths)."""
        if self.is_local:
            return None
        opts = dict(self.options)
        endpoint = opts.get(AWS_ENDPOINT_URL) or os.environ.get(AWS_ENDPOINT_URL, "")
        if endpoint.startswith("http://"):
            opts.setdefault(AWS_ALLOW_HTTP, "true")
        return opts

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem for this location (cached per option set)."""
        return _filesystem(self.is_local, tuple(sorted(self.options.items())), self._environment())

    @property
    def path(self) -> str:
        """The location as an fsspec path (no scheme for S3)."""
        return self.uri if self.is_local else self.uri.split("://", 1)[1]

    # -- small objects -----------------------------------------------------------

    def read_bytes(self) -> bytes:
        """Read the whole object; FileNotFoundError if it does not exist."""
        try:
            # One GET on S3: s3fs would first ask the size (a HEAD) to split
            # large objects across connections; lakever reads small ones here.
            extra = {} if self.is_local else {"max_concurrency": 1}
            data: bytes = self.fs.cat_file(self.path, **extra)
        except FileNotFoundError:
            raise
        except (IsADirectoryError, NotADirectoryError):
            raise FileNotFoundError(self.uri) from None
        except Exception as exc:
            raise storage_error("read", self.uri, exc) from exc
        return data

    def read_or_none(self) -> bytes | None:
        """Read the whole object, or None if it does not exist."""
        try:
            return self.read_bytes()
        except FileNotFoundError:
            return None

    def exists(self) -> bool:
        """Whether an object or directory exists here."""
        try:
            return bool(self.fs.exists(self.path))
        except Exception as exc:
            raise storage_error("check", self.uri, exc) from exc

    def remove(self) -> None:
        """Delete one object (nothing if it does not exist)."""
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise storage_error("delete", self.uri, exc) from exc

    def put_if_absent(self, data: bytes) -> bool:
        """Write a complete object unless one exists; return whether we wrote it.

        On local disk the data goes to a temporary file first and is then
        hard-linked into place, so a crash never leaves a partial object at the
        final path. On S3 a PUT is atomic and ``If-None-Match: *`` refuses to
        overwrite.
        """
        try:
            if self.is_local:
                return _local_put_if_absent(self.path, data)
            self.fs.pipe_file(self.path, data, mode="create")
            return True
        except FileExistsError:
            return False
        except Exception as exc:
            raise storage_error("write", self.uri, exc) from exc

    def put(self, data: bytes) -> None:
        """Write a complete object, replacing any existing one atomically."""
        try:
            if self.is_local:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                tmp = os.path.join(os.path.dirname(self.path), f".tmp-{uuid.uuid4().hex}")
                try:
                    # The mode the umask gives, as for the Delta files beside it
                    # (mkstemp's 0600 shut other accounts out of a shared lake).
                    with open(tmp, "xb") as fh:
                        fh.write(data)
                    os.replace(tmp, self.path)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            else:
                self.fs.pipe_file(self.path, data)
        except Exception as exc:
            raise storage_error("write", self.uri, exc) from exc

    def list_names(self) -> list[str]:
        """Names of the entries directly below this location ([] if none)."""
        try:
            entries = self.fs.ls(self.path, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except Exception as exc:
            raise storage_error("list", self.uri, exc) from exc
        names = (posixpath.basename(str(e).rstrip("/")) for e in entries)
        return sorted(n for n in names if n)

    def list_files(self) -> set[str]:
        """Names of the files (not folders) directly below this location."""
        try:
            entries = self.fs.ls(self.path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return set()
        except Exception as exc:
            raise storage_error("list", self.uri, exc) from exc
        return {
            posixpath.basename(str(e["name"]).rstrip("/"))
            for e in entries
            if e.get("type") != "directory"
        }

    def list_tree(self) -> list[tuple[str, int, datetime]]:
        """Every file below this location: (path relative to it, bytes, last modified, UTC)."""
        try:
            found = self.fs.find(self.path, detail=True)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise storage_error("list", self.uri, exc) from exc
        base = self.path.rstrip("/") + "/"
        out = []
        for name, info in found.items():
            if info.get("type") == "directory" or not str(name).startswith(base):
                continue
            when = info.get("LastModified") or info.get("mtime") or info.get("created") or 0
            if not isinstance(when, datetime):
                when = datetime.fromtimestamp(float(when), timezone.utc)
            elif when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            out.append((str(name)[len(base) :], int(info.get("size") or 0), when))
        return out

    def root_exists(self) -> bool:
        """Whether the lake root can exist here: the folder, or the S3 bucket, is there."""
        try:
            if self.is_local:
                return os.path.isdir(self.path)
            try:
                if self.fs.ls(self.path, detail=False):
                    return True  # something is there: read-only credentials need no more
            except FileNotFoundError:
                pass
            bucket = self.path.split("/", 1)[0]
            with contextlib.suppress(PermissionError):  # exists; these credentials may not ask
                self.fs.info(bucket)  # unlike exists(), raises when the store is unreachable
            return True
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise storage_error("check", self.uri, exc) from exc

    def cat_many(self, locations: list[Location]) -> dict[str, bytes]:
        """Read several objects at once (concurrently on S3), keyed by uri."""
        if not locations:
            return {}
        try:
            out = self.fs.cat([loc.path for loc in locations], on_error="return")
        except Exception as exc:
            raise storage_error("read objects under", self.uri, exc) from exc
        by_path = {loc.path: loc.uri for loc in locations}
        result: dict[str, bytes] = {}
        for p, data in out.items():
            key = by_path.get(p) or by_path.get(p.rstrip("/")) or p
            if isinstance(data, Exception):
                continue
            result[key] = data
        return result

    def remove_many(self, locations: list[Location]) -> None:
        """Delete several objects (in batches on S3); missing ones are skipped."""
        if not locations:
            return
        try:
            self.fs.rm([loc.path for loc in locations])
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise storage_error("delete objects under", self.uri, exc) from exc

    def copy_many(self, pairs: list[tuple[Location, Location]]) -> None:
        """Copy objects without moving their bytes through this process.

        Locally each is a hard link (a copy where the filesystem refuses one);
        on S3 a server-side ``CopyObject`` (several at once). A target that
        exists already is left as it is: callers copy immutable files to
        names they alone use, so it is this copy, made before.
        """
        if not pairs:
            return
        try:
            if self.is_local:
                for src, dst in pairs:
                    _link_or_copy(src.path, dst.path)
            else:
                self.fs.copy([s.path for s, _ in pairs], [d.path for _, d in pairs])
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise storage_error("copy objects into", self.uri, exc) from exc

    def remove_tree(self) -> None:
        """Delete everything at and below this location.

        A writer that has not noticed the deletion yet may add a file while
        the tree goes (its commit will fail): a folder found not empty is
        removed again, a few times, before giving up.
        """
        for attempt in range(_REMOVE_TRIES):
            try:
                if self.exists():
                    self.fs.rm(self.path, recursive=True)
                return
            except FileNotFoundError:
                return  # removed meanwhile (a concurrent deletion): the goal is reached
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY or attempt == _REMOVE_TRIES - 1:
                    raise storage_error("delete", self.uri, exc) from exc
                time.sleep(0.05 * (attempt + 1))
            except Exception as exc:
                raise storage_error("delete", self.uri, exc) from exc


_REMOVE_TRIES = 5


_DENIED = (
    "accessdenied",
    "access denied",
    "forbidden",
    "not authorized",
    "lacked the necessary privileges",  # deltalake's (object_store's) 403
)
_DATASET_IN_URI = re.compile(r"/datasets/([^/]+)(?:/|$)")


def access_denied(verb: str, uri: str, exc: BaseException) -> AccessDeniedError | None:
    """An `AccessDeniedError` if `exc` is the store refusing a request, else None.

    The message names the dataset, the operation and the object, never the
    credentials (error texts of the stores carry none; nothing is added).
    """
    text = (str(exc) or type(exc).__name__).splitlines()[0]
    lowered = text.lower().replace(" ", "")
    if isinstance(exc, FileNotFoundError):
        return None
    if not isinstance(exc, PermissionError) and not any(
        d.replace(" ", "") in lowered for d in _DENIED
    ):
        return None
    match = _DATASET_IN_URI.search(uri)
    dataset = match.group(1) if match else None
    key = uri.split("://", 1)[1].split("/", 1)[-1] if "://" in uri else uri
    where = f" of dataset {dataset!r}" if dataset else ""
    return AccessDeniedError(
        f"access denied: cannot {verb} {key}{where}: the store refused it "
        f"({type(exc).__name__}); these credentials lack the permission (see `lakever access "
        "policy`)",
        dataset=dataset,
        operation=verb,
        key=key,
    )


def storage_error(verb: str, uri: str, exc: BaseException) -> StorageError:
    """Translate an fsspec, botocore or OS error into a `StorageError` naming the object."""
    denied = access_denied(verb, uri, exc)
    if denied is not None:
        return denied
    text = str(exc) or type(exc).__name__
    hint = ""
    lowered = text.lower()
    if isinstance(exc, PermissionError) or "access denied" in lowered or "forbidden" in lowered:
        hint = "; check the credentials and permissions for this location"
    elif "credential" in lowered:
        hint = "; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or pass storage_options)"
    elif "connect" in lowered or "endpoint" in lowered:
        hint = "; check AWS_ENDPOINT_URL and that the store is reachable"
    elif isinstance(exc, OSError) and exc.errno == 28:
        hint = "; the disk is full"
    elif isinstance(exc, OSError) and exc.errno == 30:
        hint = "; the file system is read-only"
    return StorageError(f"cannot {verb} {uri}: {type(exc).__name__}: {text}{hint}")


def _link_or_copy(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst)
    except FileExistsError:
        pass
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not os.path.exists(src):
            raise
        # another filesystem, or one without hard links: copy, then rename into place
        tmp = os.path.join(os.path.dirname(dst), f".tmp-{uuid.uuid4().hex}")
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _local_put_if_absent(path: str, data: bytes) -> bool:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


_Settings = tuple[tuple[str, str], ...]
_FS_CACHE: dict[tuple[bool, _Settings, _Settings], Any] = {}


def _filesystem(
    local: bool, options: _Settings, environment: _Settings
) -> fsspec.AbstractFileSystem:
    """One filesystem per option set and state of the AWS environment it reads."""
    key = (local, options, environment)
    fs = _FS_CACHE.get(key)
    if fs is None:
        fs = fsspec.filesystem("file") if local else _s3_filesystem(dict(options))
        _FS_CACHE[key] = fs
    return fs


def _s3_filesystem(options: dict[str, str]) -> fsspec.AbstractFileSystem:
    """Build an s3fs filesystem from deltalake-style options (env vars fill the gaps)."""
    upper = {k.upper(): v for k, v in options.items()}
    client_kwargs: dict[str, Any] = {}
    endpoint = upper.get(AWS_ENDPOINT_URL) or os.environ.get(AWS_ENDPOINT_URL)
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    region = upper.get(AWS_REGION) or os.environ.get(AWS_REGION)
    if region:
        client_kwargs["region_name"] = region
    kwargs: dict[str, Any] = {
        "client_kwargs": client_kwargs,
        # Commits and hints change under us: never answer from a stale listing.
        "use_listings_cache": False,
        "skip_instance_cache": True,
    }
    if AWS_ACCESS_KEY_ID in upper:
        kwargs["key"] = upper[AWS_ACCESS_KEY_ID]
    if AWS_SECRET_ACCESS_KEY in upper:
        kwargs["secret"] = upper[AWS_SECRET_ACCESS_KEY]
    if AWS_SESSION_TOKEN in upper:
        kwargs["token"] = upper[AWS_SESSION_TOKEN]
    return fsspec.filesystem("s3", **kwargs)
