"""Test helpers: a moto S3 server, sample rows, and content hashes of a version."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

import lakever as lv
from lakever.schema import core_columns

CLASSES = ["car", "person", "bike", "truck"]


@dataclass
class S3Server:
    """A moto S3 server on 127.0.0.1 in its own process.

    Not a thread of the test process: some deltalake calls hold the GIL while
    they wait on S3, which would starve an in-process server.
    """

    process: subprocess.Popen[bytes]
    endpoint: str

    @classmethod
    def start(cls, *, request_log: Path | None = None) -> S3Server:
        """Start a server; with `request_log`, each request is a line of that file."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        log = open(request_log, "ab") if request_log else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.1)
        return cls(proc, endpoint)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def enforce_iam(self) -> None:
        """Turn IAM enforcement on (create an admin user with its key first)."""
        request = urllib.request.Request(
            self.endpoint + "/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).close()

    def storage_options(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }


def core_schema(kind: str) -> dict[str, pl.DataType]:
    """The core columns of a table kind, as a Polars schema."""
    return {c.name: c.dtype for c in core_columns(kind)}  # type: ignore[arg-type]


def frames(ids: list[str] | range, *, prefix: str = "f", **cols: Any) -> pl.DataFrame:
    names = [f"{prefix}{i:05d}" if isinstance(i, int) else i for i in ids]
    data: dict[str, Any] = {
        "frame_id": names,
        "uri": [f"s3://media/{n}.jpg" for n in names],
        "media_type": ["image"] * len(names),
        "width": [640] * len(names),
        "height": [480] * len(names),
    }
    data.update(cols)
    return pl.DataFrame(data)


def labels(
    frame_ids: list[str], *, per_frame: int = 2, cls: str = "car", start: int = 0, **cols: Any
) -> pl.DataFrame:
    rows = []
    for f in frame_ids:
        for j in range(per_frame):
            rows.append(
                {
                    "label_id": f"{f}-l{start + j}",
                    "frame_id": f,
                    "cls": cls,
                    "x": 10.0 + j,
                    "y": 20.0,
                    "w": 30.0,
                    "h": 40.0,
                }
            )
    df = pl.DataFrame(rows)
    for k, v in cols.items():
        df = df.with_columns(pl.lit(v).alias(k))
    return df


def vendor_batch(
    n_frames: int, *, bad_every: int = 7, prefix: str = "f"
) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Frames and labels where some rows break a rule; returns the expected verdicts too."""
    f = frames(range(n_frames), prefix=prefix)
    width = [-5 if i % bad_every == 3 else 640 for i in range(n_frames)]
    f = f.with_columns(pl.Series("width", width))
    bad_frames = {fid for fid, w in zip(f["frame_id"], width, strict=True) if w < 0}
    lab = labels(f["frame_id"].to_list(), per_frame=3)
    cls = ["dog" if i % 11 == 5 else "car" for i in range(lab.height)]
    lab = lab.with_columns(pl.Series("cls", cls))
    expected: dict[str, str] = {}
    for lid, fid, c in zip(lab["label_id"], lab["frame_id"], lab["cls"], strict=True):
        if c == "dog":
            expected[lid] = "unknown_class"
        elif fid in bad_frames:
            expected[lid] = "frame_rejected"
    return f, lab, {"bad_frames": bad_frames, "labels": expected}


def table_hash(df: pl.DataFrame) -> str:
    """A content hash independent of row and column order."""
    if df.is_empty():
        return "empty:" + ",".join(sorted(df.columns))
    df = df.select(sorted(df.columns))
    key = "frame_id" if "label_id" not in df.columns else "label_id"
    df = df.sort(key)
    h = hashlib.sha256()
    h.update(",".join(df.columns).encode())
    h.update(df.write_csv().encode())
    return h.hexdigest()


def content_hash(view: lv.View | lv.Dataset) -> dict[str, str]:
    """Hash of every table at a version."""
    return {t: table_hash(view.read(t)) for t in view.tables}


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make a folder refuse new entries, even to root (chattr +i), for the block's duration."""
    if os.geteuid() == 0:
        assert shutil.which("chattr"), "chattr is needed to make a folder read-only as root"
        subprocess.run(["chattr", "+i", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(mode)


def duckdb_connection() -> Any:
    """A DuckDB connection with the delta and httpfs extensions loaded from their packages.

    DuckDB would download them; the packages ship them (this machine is offline).
    """
    import glob
    import os

    import duckdb

    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    for name in ("delta", "httpfs"):
        package = __import__(f"duckdb_extension_{name}")
        folder = os.path.dirname(package.__file__)
        (ext,) = glob.glob(os.path.join(folder, "extensions", "*", f"{name}.duckdb_extension"))
        con.execute(f"LOAD '{ext}'")
    return con
