"""Credentials: connections never share what they read; read-only credentials can read and list.

Runs against a moto S3 server of its own that enforces IAM policies.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

import lakever as lv
from tests.helpers import CLASSES, S3Server, frames

BUCKET = "lakever-access"


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


@pytest.fixture(scope="module")
def enforcing() -> Iterator[tuple[S3Server, dict[str, dict[str, str]]]]:
    server = S3Server.start()
    admin = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1", **admin)
    boto3.client(
        "s3", endpoint_url=server.endpoint, region_name="us-east-1", **admin
    ).create_bucket(Bucket=BUCKET)
    everything = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    listing = {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{BUCKET}"}
    policies = {
        "writer": _policy(everything),
        "reader": _policy(
            listing,
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"},
        ),
        # may read lakever's own records, but not one byte of the tables
        "metadata-only": _policy(
            listing,
            {
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{BUCKET}/lake/datasets/*/_lakever/*",
            },
        ),
    }
    keys: dict[str, dict[str, str]] = {}
    for user, document in policies.items():
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=document)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = {
            **server.storage_options(),
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
    server.enforce_iam()  # from now on, unknown keys and missing permissions are refused
    yield server, keys
    server.stop()


def test_a_connection_never_reads_through_another_ones_objects(
    enforcing: tuple[S3Server, dict[str, dict[str, str]]],
) -> None:
    _, keys = enforcing
    uri = f"s3://{BUCKET}/lake"
    writer = lv.connect(uri, storage_options=keys["writer"])
    ds = writer.create_dataset("cams", classes=CLASSES)
    ds.add_frames(frames(range(3)))
    assert ds.read("frames").height == 3  # the writer's objects are now cached
    limited = lv.connect(uri, storage_options=keys["metadata-only"]).dataset("cams")
    assert limited.head.seq == 1  # it may read the commit log ...
    with pytest.raises(lv.StorageError):
        limited.read("frames")  # ... but never the rows, cached or not
    with pytest.raises(lv.StorageError):
        limited.at(1).scan("frames").collect()


def test_read_only_credentials_read_and_list_but_write_nothing(
    enforcing: tuple[S3Server, dict[str, dict[str, str]]],
) -> None:
    _, keys = enforcing
    uri = f"s3://{BUCKET}/lake2"
    writer = lv.connect(uri, storage_options=keys["writer"]).create_dataset("ro", classes=CLASSES)
    writer.add_frames(frames(range(2)))
    writer.create_snapshot("s")
    reader = lv.connect(uri, storage_options=keys["reader"])
    assert reader.list_datasets()["name"].to_list() == ["ro"]
    ds = reader.dataset("ro")
    assert ds.at("s").read("frames").height == 2
    assert [c.seq for c in ds.log()] == [1, 0]
    with pytest.raises(lv.StorageError, match="cannot"):
        ds.add_frames(frames(range(5, 6)))
    with pytest.raises(lv.StorageError):
        ds.create_snapshot("t")
    assert writer.head.seq == 1 and [s.name for s in writer.list_snapshots()] == ["s"]
    assert writer.add_frames(frames(range(5, 6))).seq == 2  # nothing left blocked
