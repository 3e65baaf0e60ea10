"""Shared fixtures: an isolated environment and one lake per storage backend.

Every dataset behaviour runs against the local filesystem and against S3 (a
moto server on 127.0.0.1, started once per session, with a bucket per test)
through the parametrised `lake` fixture.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

import lakever as lv
from tests.helpers import S3Server

_bucket_ids = itertools.count()


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No real credentials, no home-directory state, no inherited lake."""
    for var in list(os.environ):
        if var.startswith(("AWS_", "LAKEVER_")):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("LAKEVER_AUTHOR", "tester")


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
