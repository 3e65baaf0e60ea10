"""Spark helpers: the Hadoop S3A settings for lakever's storage options."""

from __future__ import annotations

from collections.abc import Mapping

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
