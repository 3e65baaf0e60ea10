"""Spark helpers: reading a version by name on the Spark side; S3A settings.

`read` runs entirely through Spark (no lakever on the cluster); `s3a_conf`
turns lakever's storage options into Hadoop S3A settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lakever.errors import InvalidRefError, UnsupportedEngineError
from lakever.storage import (
    AWS_ACCESS_KEY_ID,
    AWS_ENDPOINT_URL,
    AWS_REGION,
    AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN,
)

_PREFIX = "spark.hadoop.fs.s3a."


def s3a_conf(options: Mapping[str, str]) -> dict[str, str]:
    """Spark settings (``spark.hadoop.fs.s3a.*``) that read S3 with these storage options.

    Temporary credentials (a session token, as `Lake.credentials` vends them)
    select Hadoop's ``TemporaryAWSCredentialsProvider``.

    Example:
        >>> conf = s3a_conf(lake.credentials("street", role_arn=arn))  # doctest: +SKIP
        >>> builder = SparkSession.builder
        >>> for k, v in conf.items(): builder = builder.config(k, v)  # doctest: +SKIP
    """
    opts = {k.upper(): v for k, v in options.items()}
    conf: dict[str, str] = {}
    if opts.get(AWS_ACCESS_KEY_ID):
        conf[_PREFIX + "access.key"] = opts[AWS_ACCESS_KEY_ID]
        conf[_PREFIX + "secret.key"] = opts.get(AWS_SECRET_ACCESS_KEY, "")
    if opts.get(AWS_SESSION_TOKEN):
        conf[_PREFIX + "session.token"] = opts[AWS_SESSION_TOKEN]
        conf[_PREFIX + "aws.credentials.provider"] = (
            "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
        )
    if opts.get(AWS_REGION):
        conf[_PREFIX + "endpoint.region"] = opts[AWS_REGION]
    endpoint = opts.get(AWS_ENDPOINT_URL)
    if endpoint:
        conf[_PREFIX + "endpoint"] = endpoint
        conf[_PREFIX + "path.style.access"] = "true"
        conf[_PREFIX + "connection.ssl.enabled"] = str(endpoint.startswith("https://")).lower()
    return conf


def read(
    spark: Any,
    uri: str,
    dataset: str,
    table: str,
    *,
    at: str | int | None = None,
) -> Any:
    """A Spark DataFrame of `table` of `dataset` at `at`, resolved on the Spark side.

    The ref is read through Spark itself, so any Spark with Delta support
    works without lakever on the cluster: a snapshot name from the tag table,
    a branch name (or None: 'main') from its ref file, a commit seq from its
    record. Then the table is read with ``versionAsOf``.

    Spark through Sail (0.7) cannot time-travel to most versions older than a
    table's newest checkpoint; such a read raises `UnsupportedEngineError`
    naming the version and what reads it (never a wrong answer).

    Raises:
        InvalidRefError: the ref names nothing Spark can resolve (commit ids
            and times: resolve them with lakever, `View.delta_table`).
        UnsupportedEngineError: the engine refused the version.
    """
    from lakever.filenames import encode
    from lakever.schema import table_kind

    table_kind(table)
    root = f"{uri.rstrip('/')}/datasets/{dataset}"
    version = _resolve(spark, root, table, at, encode)
    location = f"{root}/{table}"
    df = spark.read.format("delta").option("versionAsOf", version).load(location)
    try:
        df.columns  # noqa: B018 - analysis happens here: a refused version fails now
    except Exception as exc:
        text = str(exc)
        if "Missing commit file" in text or "expected version" in text:
            raise UnsupportedEngineError(
                f"this Spark cannot read version {version} of {location} (the ref {at!r}): "
                f"it is older than the table's newest checkpoint ({text.splitlines()[0]}). "
                "Read it with lakever (ds.at(ref).read, lakever.scan for Polars, "
                "View.to_duckdb), or archive the snapshot: its archive copy is a one-commit "
                "table every Spark reads"
            ) from exc
        raise
    return df


def _resolve(spark: Any, root: str, table: str, at: str | int | None, encode: Any) -> int:
    """The Delta version of `table` at `at`, read through Spark."""
    name = "main" if at is None or str(at).upper() == "HEAD" else str(at)
    if isinstance(at, int) or name.isdigit():
        return _version_in(spark, f"{root}/_lakever/commits/{int(name):012d}.json", table, at,
                           key="table_versions")  # fmt: skip
    if name != "main":
        try:
            tags = spark.read.format("delta").load(f"{root}/snapshots")
            rows = tags.filter(tags.name == name).select("tables").collect()
        except Exception:  # no tag table yet
            rows = []
        if rows:
            for entry in rows[-1]["tables"]:
                if entry["table"] == table:
                    return int(entry["version"])
            raise InvalidRefError(f"snapshot {name!r} has no table {table!r}")
    return _version_in(spark, f"{root}/_lakever/branches/{encode(name)}.json", table, at)


def _version_in(spark: Any, path: str, table: str, at: Any, *, key: str = "tables") -> int:
    missing = InvalidRefError(
        f"{at!r} is no snapshot, branch or commit seq Spark can find ({path}); "
        "resolve commit ids and times with lakever (View.delta_table)"
    )
    try:
        doc = spark.read.json(path, multiLine=True).collect()
    except Exception as exc:
        raise missing from exc
    if not doc:
        raise missing
    row = doc[0].asDict(recursive=True)
    if key == "tables":
        for entry in row.get("tables") or []:
            if entry["table"] == table:
                return int(entry["version"])
    else:
        versions = row.get(key) or {}
        if table in versions and versions[table] is not None:
            return int(versions[table])
    raise InvalidRefError(f"{at!r} has no table {table!r}")


def write(
    sdf: Any,
    ds: Any,
    table: str,
    *,
    mode: str = "upsert",
    job_id: str,
    message: str | None = None,
) -> Any:
    """Write a Spark DataFrame into `table` of `ds` in one lakever commit (no row via the driver).

    The executors write Parquet files into the job's staging folder
    (`Dataset.writer`), then the driver validates and adopts them. A retry
    with the same `job_id` returns the first commit.
    """
    w = ds.writer(table, mode=mode, job_id=job_id)
    if not w.committed():
        sdf.select(*[f.name for f in w.schema]).write.mode("overwrite").parquet(w.staging_uri)
    return w.commit(message=message)
