"""Shared fixtures: an isolated environment and one lake per storage backend.

Every dataset behaviour runs against the local filesystem and against S3 (a
moto server on 127.0.0.1, started once per session, with a bucket per test)
through the parametrised `lake` fixture.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

import lakever as lv
from tests.helpers import S3Server

_bucket_ids = itertools.count()


def _isolate_the_process() -> dict[str, str]:
    """Write the C environment once, before any test runs; hand Python a dict copy.

    No real credentials, no home-directory state, no inherited lake, and TZ
    set so that a test may overwrite it in place. Nothing in this process
    adds to the C environment afterwards. Once a process has read S3 through
    Polars (2.1), a Polars thread calls getenv() every 100 ms, and glibc's
    setenv() is not thread-safe: adding a variable moves the array that
    thread reads, and the process dies of SIGSEGV. The suite crashed so about
    once in 15 fast runs: pytest adds and removes PYTEST_CURRENT_TEST around
    every test, and each test added and removed its own variables
    (docs/ARCHITECTURE.md, "Environment variables").
    """
    for var in list(os.environ):
        if var.startswith(("AWS_", "LAKEVER_")):
            del os.environ[var]
    home = tempfile.mkdtemp(prefix="lakever-tests-home-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ.update(
        {
            "HOME": home,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "LAKEVER_AUTHOR": "tester",
        }
    )
    os.environ.setdefault("TZ", "UTC")
    # From here on `os.environ` is a plain dict: pytest, monkeypatch.setenv,
    # os.getenv and lakever's lookups read and write it; native code and
    # subprocesses started without `env=` see the C environment written above.
    copy = dict(os.environ)
    os.environ = copy  # type: ignore[assignment]  # noqa: B003 (the point: C is left alone)
    return dict(copy)


_PROCESS_ENV = _isolate_the_process()


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own `os.environ` (a dict, as above) with its own HOME."""
    monkeypatch.setattr(os, "environ", {**_PROCESS_ENV, "HOME": str(tmp_path / "home")})


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_server: S3Server) -> Any:
    # Made once: building a boto3 client costs about a second.
    return boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    name = f"lakever-test-{os.getpid()}-{next(_bucket_ids)}"
    s3_client.create_bucket(Bucket=name)
    return name


#: Every dataset behaviour runs on both backends. The S3 variants are slow
#: (moto answers one request at a time), so the default run keeps S3 coverage
#: through tests/test_dataset.py and tests/test_access.py; CI runs them all.
BACKENDS = ["local", pytest.param("s3", marks=pytest.mark.slow)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def lake_uri(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[str, dict[str, str]]:
    """(uri, storage options) of an empty lake on the parametrised backend."""
    if backend == "local":
        return str(tmp_path / "lake"), {}
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/lake", server.storage_options()


@pytest.fixture
def lake(lake_uri: tuple[str, dict[str, str]]) -> lv.Lake:
    uri, options = lake_uri
    return lv.connect(uri, storage_options=options)


@pytest.fixture
def local_lake(tmp_path: Path) -> lv.Lake:
    return lv.connect(tmp_path / "lake")
