"""Scoped access enforced by the store: per-dataset policies, roles, vended credentials.

A moto server of its own with IAM enforcement on. moto enforces a role's
identity policies (resource prefixes included) but ignores session policies
and ``s3:prefix`` conditions, so each dataset and mode gets a role whose
identity policy is `access_policy(...)`; the documents themselves are checked
by a small evaluator below.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import polars as pl
import pytest

import lakever as lv
from lakever import access
from tests.helpers import CLASSES, S3Server, duckdb_connection, frames, labels, table_hash

BUCKET = "lakever-scoped"
URI = f"s3://{BUCKET}/lakes/cv"
ACCOUNT = "123456789012"
TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
    }
)


class World:
    """The server, the admin's options, and a role ARN per (dataset, mode)."""

    def __init__(self, server: S3Server, admin: dict[str, str]) -> None:
        self.server = server
        self.admin = admin
        self.roles: dict[tuple[str, str], str] = {}

    def assume(self, dataset: str, mode: str) -> dict[str, str]:
        """Storage options of a session of the role for (dataset, mode)."""
        sts = boto3.client(
            "sts", endpoint_url=self.server.endpoint, region_name="us-east-1",
            aws_access_key_id=self.admin["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.admin["AWS_SECRET_ACCESS_KEY"],
        )  # fmt: skip
        got = sts.assume_role(RoleArn=self.roles[(dataset, mode)], RoleSessionName="tests")
        c = got["Credentials"]
        return {
            **self.server.storage_options(),
            "AWS_ACCESS_KEY_ID": c["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": c["SecretAccessKey"],
            "AWS_SESSION_TOKEN": c["SessionToken"],
        }


def _street(lake: lv.Lake, name: str) -> lv.Dataset:
    ds = lake.create_dataset(name, classes=CLASSES)
    fids = [f"f{i:05d}" for i in range(12)]
    ds.add_frames(frames(fids))
    ds.upsert_labels(labels(fids, per_frame=2))
    ds.create_snapshot("v1")
    ds.upsert_inferences("yolo", labels(fids, per_frame=1).with_columns(confidence=pl.lit(0.7)))
    ds.upsert_labels(labels(fids[:3], per_frame=1, cls="person"))
    qa = ds.create_branch("qa")
    qa.delete_labels([f"{fids[4]}-l1"])
    return ds


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    server = S3Server.start()
    root = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1", **root)
    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1", **root).create_bucket(
        Bucket=BUCKET
    )
    everything = {"Effect": "Allow", "Action": "*", "Resource": "*"}
    iam.create_user(UserName="admin")
    iam.put_user_policy(
        UserName="admin",
        PolicyName="all",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [everything]}),
    )
    key = iam.create_access_key(UserName="admin")["AccessKey"]
    admin = {
        **server.storage_options(),
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }
    w = World(server, admin)
    lake = lv.connect(URI, storage_options=admin)
    for name in ("cam-a", "cam-b"):
        for mode in ("read", "write"):
            role = f"{name}-{mode}"
            arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
            iam.put_role_policy(
                RoleName=role,
                PolicyName="lakever",
                PolicyDocument=json.dumps(lake.access_policy(name, mode=mode)),
            )
            w.roles[(name, mode)] = arn
    server.enforce_iam()  # from now on, unknown keys and missing permissions are refused
    for name in ("cam-a", "cam-b"):
        _street(lake, name)
    yield w
    server.stop()


def _state(ds: lv.Dataset) -> dict[str, str]:
    return {t: table_hash(ds.read(t)) for t in ("frames", "labels")}


def test_a_reader_reads_its_dataset_and_nothing_else(world: World, tmp_path: Path) -> None:
    admin = lv.connect(URI, storage_options=world.admin)
    a = admin.dataset("cam-a")
    lake = lv.connect(URI, storage_options=world.assume("cam-a", "read"))
    ds = lake.dataset("cam-a")
    assert _state(ds) == _state(a)
    assert table_hash(ds.at("v1").read("labels")) == table_hash(a.at("v1").read("labels"))
    assert ds.on_branch("qa").read("labels").height == a.read("labels").height - 1
    assert ds.diff("v1").summary().equals(a.diff("v1").summary())
    assert ds.diff("main", "qa").rows("labels").height == 1
    assert ds.history(label_id="f00000-l0").height == a.history(label_id="f00000-l0").height
    assert [c.seq for c in ds.log()] == [c.seq for c in a.log()]
    assert ds.changes_since_snapshot().summary().equals(a.changes_since_snapshot().summary())
    assert ds.at("v1").scan("labels").select(pl.len()).collect().item() == 24
    ev = ds.evaluate("yolo", against="v1", store=False)
    assert ev.summary == a.evaluate("yolo", against="v1", store=False).summary
    written = ds.at("v1").export(str(tmp_path / "v1"), format="parquet")
    assert written and pl.read_parquet(tmp_path / "v1" / "labels.parquet").height == 24
    assert lake.list_datasets()["name"].to_list() == ["cam-a"]
    assert "cam-b" in set(lake.invalid_entries()["name"])
    with pytest.raises(lv.AccessDeniedError) as err:
        lake.dataset("cam-b")
    assert err.value.dataset == "cam-b" and "cam-b" in err.value.key
    before = _state(a)
    refused = [
        lambda: ds.add_frames(frames(["new-1"])),
        lambda: ds.create_snapshot("nope"),
        lambda: ds.create_branch("nope"),
        lambda: ds.evaluate("yolo", against="v1"),
    ]
    for attempt in refused:
        with pytest.raises(lv.AccessDeniedError) as err:
            attempt()
        assert err.value.dataset == "cam-a"
        assert _state(a) == before
        commit = a.add_frames(frames([f"after-{len(a.log())}"]))  # nothing left blocked
        assert a.head.id == commit.id
        before = _state(a)


@pytest.mark.slow
def test_a_writer_writes_its_dataset_only(world: World) -> None:
    admin = lv.connect(URI, storage_options=world.admin)
    b_before = _state(admin.dataset("cam-b"))
    lake = lv.connect(URI, storage_options=world.assume("cam-a", "write"))
    ds = lake.dataset("cam-a")
    ds.upsert_labels(labels(["f00001"], per_frame=1, cls="truck"))
    ds.create_snapshot("writer-v1")
    fix = ds.create_branch("fix")
    fix.delete_labels(["f00002-l0"])
    assert ds.merge("fix").commit is not None
    up = ds.ingest(labels=labels(["f00003"], per_frame=1, cls="bike"), upload_id="w-1")
    assert up.status == "done"
    seen = admin.dataset("cam-a")
    assert seen.head.id == ds.head.id and "f00002-l0" not in set(seen.read("labels")["label_id"])
    with pytest.raises(lv.AccessDeniedError):
        lake.dataset("cam-b")
    b = lv.connect(URI, storage_options=world.admin).dataset("cam-b")
    assert _state(b) == b_before
    assert b.add_frames(frames(["after"])).seq == b.head.seq


def test_vended_credentials_carry_the_policy_and_read(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = lv.connect(URI, storage_options=world.admin)
    calls: list[dict[str, Any]] = []
    real = access._client

    def recording(loc: Any, service: str) -> Any:
        client = real(loc, service)
        if service == "sts":
            inner = client.assume_role

            def assume_role(**kw: Any) -> Any:
                calls.append(kw)
                return inner(**kw)

            client.assume_role = assume_role
        return client

    monkeypatch.setattr(access, "_client", recording)
    creds = lake.credentials("cam-a", role_arn=world.roles[("cam-a", "read")],
                             ttl=timedelta(minutes=30))  # fmt: skip
    (call,) = calls
    assert json.loads(call["Policy"]) == lake.access_policy("cam-a", mode="read")
    assert call["DurationSeconds"] == 1800 and call["RoleArn"] == world.roles[("cam-a", "read")]
    assert creds.mode == "read" and creds.dataset == "cam-a" and creds.expires_at is not None
    assert set(creds) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    assert creds["AWS_SECRET_ACCESS_KEY"] not in repr(creds) + str(creds)
    reader = lv.connect(URI, storage_options=creds)  # verbatim
    assert reader.dataset("cam-a").read("frames").height >= 12
    uri, version = reader.dataset("cam-a").at("v1").delta_table("labels")
    assert pl.scan_delta(uri, version=version, storage_options=dict(creds)).collect().height == 24
    con = duckdb_connection()
    con.execute(access.duckdb_secret(creds))
    counted = con.execute(f"SELECT count(*) FROM delta_scan('{uri}', version => {version})")
    assert counted.fetchall() == [(24,)]
    conf = lv.spark.s3a_conf(creds)
    assert conf["spark.hadoop.fs.s3a.session.token"] == creds["AWS_SESSION_TOKEN"]
    assert "SESSION_TOKEN" in access.duckdb_secret(creds)
    with pytest.raises(lv.InvalidInputError, match="ttl"):
        lake.credentials("cam-a", role_arn=world.roles[("cam-a", "read")], ttl=timedelta(days=2))


@pytest.mark.slow
def test_commits_on_s3_record_the_callers_identity(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LAKEVER_AUTHOR", raising=False)
    lake = lv.connect(URI, storage_options=world.assume("cam-a", "write"))
    commit = lake.dataset("cam-a").add_frames(frames(["by-role"]))
    assert commit.author.startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/cam-a-write/")
    monkeypatch.setenv("LAKEVER_AUTHOR", "etl")
    assert lake.dataset("cam-a").add_frames(frames(["by-etl"])).author == "etl"


@pytest.mark.slow
def test_a_refused_snapshot_load_record_is_skipped_and_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    lake = lv.connect(URI, storage_options=world.assume("cam-b", "read"))
    with caplog.at_level(logging.DEBUG, logger="lakever"):
        assert lake.dataset("cam-b").at("v1").read("frames").height == 12
    assert any("not recorded" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_no_credential_appears_in_errors_logs_reprs_records_or_cli_output(
    world: World, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_cli import run

    opts = world.assume("cam-a", "write")
    secrets = [opts["AWS_ACCESS_KEY_ID"], opts["AWS_SECRET_ACCESS_KEY"], opts["AWS_SESSION_TOKEN"]]
    seen: list[str] = []
    with caplog.at_level(logging.DEBUG):
        lake = lv.connect(URI, storage_options=opts)
        ds = lake.dataset("cam-a")
        seen += [repr(lake), repr(ds), repr(ds.table_location("labels")), str(lake.root)]
        ds.ingest(labels=labels(["f00005"], per_frame=1, cls="bike"), upload_id="scan-1")
        wrong = {**opts, "AWS_SECRET_ACCESS_KEY": "not-" + opts["AWS_SECRET_ACCESS_KEY"]}
        attempts = (
            lambda: lake.dataset("cam-b"),
            lambda: lv.connect(URI, storage_options=wrong).dataset("cam-a"),
        )
        for attempt in attempts:
            with pytest.raises(lv.LakeverError) as err:
                attempt()
            seen.append(str(err.value) + repr(err.value))
    # lakever's own records; botocore's DEBUG records print request headers
    # (the key id and session token) whoever calls it
    seen += [r.getMessage() for r in caplog.records if r.name.startswith("lakever")]
    seen += [json.dumps(c.to_dict(), default=str) for c in ds.log()]
    seen += [json.dumps(vars(ds.upload("scan-1")), default=str)]
    for name, value in opts.items():
        monkeypatch.setenv(name, value)
    for args in (("log", "cam-a"), ("show", "cam-b", "v1"), ("snapshot", "create", "cam-b", "x"),
                 ("snapshot", "create", "cam-b", "x", "--json")):  # fmt: skip
        code, out, err = run(*args, "--uri", URI)
        seen += [out, err]
        if args[0] != "log":
            assert code == 5, (args, out, err)
    text = "\n".join(seen)
    assert "AccessDeniedError" in text
    for secret in secrets:
        assert secret not in text


# -- the policy documents, checked by a small evaluator ---------------------------------


def _allows(
    document: dict[str, Any], action: str, resource: str, prefix: str | None = None
) -> bool:
    """Whether an Allow statement grants `action` on `resource` (with its s3:prefix condition)."""
    for st in document["Statement"]:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if st["Effect"] != "Allow" or action not in actions:
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in resources):
            continue
        cond = st.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
        if cond is not None and (prefix is None or not any(
                fnmatch.fnmatchcase(prefix, p) for p in cond)):  # fmt: skip
            continue
        return True
    return False


def test_policies_scope_one_dataset_by_prefix() -> None:
    lake = lv.connect("s3://bkt/lakes/cv", archive_uri="s3://cold/archive")
    read = lake.access_policy("cam-a", mode="read")
    write = lake.access_policy("cam-a", mode="write", archive=True)
    obj = "arn:aws:s3:::bkt/lakes/cv/datasets/"
    for doc in (read, write):
        assert _allows(doc, "s3:GetObject", obj + "cam-a/labels/part-0.parquet")
        assert not _allows(doc, "s3:GetObject", obj + "cam-b/labels/part-0.parquet")
        assert not _allows(doc, "s3:GetObject", obj + "cam-ab/_lakever/dataset.json")
        assert _allows(doc, "s3:ListBucket", "arn:aws:s3:::bkt", "lakes/cv/datasets/cam-a/labels/")
        assert _allows(doc, "s3:ListBucket", "arn:aws:s3:::bkt", "lakes/cv/datasets/")
        assert not _allows(doc, "s3:ListBucket", "arn:aws:s3:::bkt", "lakes/cv/datasets/cam-b/")
        assert not _allows(doc, "s3:ListBucket", "arn:aws:s3:::bkt", "other/")
        assert not _allows(doc, "s3:ListBucket", "arn:aws:s3:::bkt")  # no unconditioned listing
    assert not _allows(read, "s3:PutObject", obj + "cam-a/_lakever/commits/1.json")
    assert not _allows(read, "s3:DeleteObject", obj + "cam-a/labels/part-0.parquet")
    assert _allows(write, "s3:PutObject", obj + "cam-a/_lakever/commits/1.json")
    assert _allows(write, "s3:DeleteObject", obj + "cam-a/labels/part-0.parquet")
    assert not _allows(write, "s3:PutObject", obj + "cam-b/_lakever/commits/1.json")
    assert _allows(write, "s3:PutObject", "arn:aws:s3:::cold/archive/cam-a/id/v1/labels/x.parquet")
    assert not _allows(write, "s3:PutObject", "arn:aws:s3:::cold/archive/cam-b/id/x.parquet")
    assert not _allows(read, "s3:GetObject", "arn:aws:s3:::cold/archive/cam-a/id/x.parquet")
    whole = lake.access_policy(mode="read")
    assert _allows(whole, "s3:GetObject", obj + "cam-b/labels/part-0.parquet")
    assert not _allows(whole, "s3:GetObject", "arn:aws:s3:::bkt/elsewhere/x")
    longest = "n" * 128
    deep = lv.connect("s3://" + "b" * 63 + "/" + "p" * 60, archive_uri="s3://c/" + "a" * 60)
    for mode in ("read", "write"):
        doc = deep.access_policy(longest, mode=mode)
        assert len(access.compact(doc)) <= access.MAX_POLICY_CHARS, mode
        assert len(access.compact(deep.access_policy(longest, mode=mode, archive=True))) <= 2048
    with pytest.raises(lv.InvalidNameError):
        lake.access_policy("../cam-b")
    with pytest.raises(lv.InvalidInputError, match="local"):
        lv.connect("/tmp/somewhere").access_policy("cam-a")


def test_access_commands(world: World) -> None:
    from tests.test_cli import run

    code, out, err = run("access", "policy", "cam-a", "--mode", "write", "--uri", URI, "--json")
    assert code == 0, err
    assert json.loads(out) == lv.connect(URI).access_policy("cam-a", mode="write")
    code, out, err = run("access", "policy", "cam-a", "--mode", "admin", "--uri", URI)
    assert code == 2 and "mode" in err
