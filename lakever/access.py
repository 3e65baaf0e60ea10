"""Scoped access, enforced by the object store: policies, vended credentials, the caller.

lakever has no server; the store is the enforcer. Everything of a dataset
lives under ``<lake>/datasets/<name>/``, so two wildcard statements scope it:

- **read**: ``s3:GetObject`` on ``<lake>/datasets/<name>/*``, and
  ``s3:ListBucket`` on the bucket limited (``s3:prefix``) to that folder and
  to the lake's top two levels (the names of the datasets, nothing in them:
  `list_datasets` shows the others as not readable);
- **write**: also ``s3:PutObject``, ``s3:DeleteObject`` and the multipart
  actions, on the same folder;
- ``archive=True`` adds the same on the archive location of the dataset.

`access_policy` returns such a document (at most 1,000 characters for any
dataset name), to attach to a role as its identity policy or to pass as a
session policy. `credentials` calls STS ``AssumeRole`` with it as the
session policy and returns storage options every reader takes verbatim.
`caller` asks STS once per connection who is calling, for the author of
commits on S3 when none is given.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from lakever.errors import InvalidInputError
from lakever.names import check_dataset_name
from lakever.storage import (
    AWS_ACCESS_KEY_ID,
    AWS_ENDPOINT_URL,
    AWS_REGION,
    AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN,
    Location,
    storage_error,
)

if TYPE_CHECKING:
    from lakever.catalog import Lake

log = logging.getLogger("lakever")

MODES = ("read", "write")
READ_ACTIONS = ["s3:GetObject"]
WRITE_ACTIONS = [
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
]
#: The longest policy `access_policy` makes for any dataset name without the
#: archive, with a lake prefix of up to 60 characters (checked in tests); STS
#: takes session policies of up to 2,048.
MAX_POLICY_CHARS = 1000
MIN_TTL = timedelta(minutes=15)  # STS refuses shorter sessions
MAX_TTL = timedelta(hours=12)


class Credentials(dict[str, str]):
    """Storage options with temporary credentials (pass them as they are).

    Attributes:
        expires_at: when STS says they expire (UTC).
        dataset: the dataset they are scoped to (None: the whole lake).
        mode: 'read' or 'write'.
    """

    expires_at: datetime | None = None
    dataset: str | None = None
    mode: str = "read"

    def __repr__(self) -> str:
        shown = {k: ("***" if k in _SECRETS else v) for k, v in self.items()}
        return f"Credentials({shown!r}, mode={self.mode!r}, expires_at={self.expires_at!r})"

    __str__ = __repr__


_SECRETS = {AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN}


def _bucket_and_prefix(loc: Location) -> tuple[str, str]:
    if loc.is_local:
        raise InvalidInputError(
            f"access policies are for lakes on S3; {loc.uri} is a local folder (use the "
            "file system's permissions)"
        )
    bucket, _, prefix = loc.uri.split("://", 1)[1].partition("/")
    return bucket, prefix.strip("/")


def policy_document(
    root: Location,
    dataset: str | None,
    *,
    mode: str,
    archive: Location | None = None,
) -> dict[str, Any]:
    """The IAM policy for `dataset` (None: the whole lake) under the lake at `root`.

    One ``s3:ListBucket`` statement per bucket, limited by ``s3:prefix`` to
    the dataset's folder (and, in the lake's bucket, to the two listings that
    name the datasets: the lake root and ``datasets/``), and one statement
    with the object actions on the folders.
    """
    if mode not in MODES:
        raise InvalidInputError(f"mode must be 'read' or 'write', got {mode!r}")
    if dataset is not None:
        check_dataset_name(dataset)
    bucket, prefix = _bucket_and_prefix(root)
    top = f"{prefix}/" if prefix else ""
    places = [(bucket, f"{top}datasets/{dataset}/" if dataset else top)]
    if archive is not None:
        a_bucket, a_prefix = _bucket_and_prefix(archive)
        a_top = f"{a_prefix}/" if a_prefix else ""
        places.append((a_bucket, f"{a_top}{dataset}/" if dataset else a_top))
    listing: dict[str, list[str]] = {}
    for b, folder in places:
        listing.setdefault(b, []).append(f"{folder}*")
    if dataset is not None:  # the names of the datasets, nothing inside the others
        listing[bucket] += [top, f"{top}datasets/"]
    statements: list[dict[str, Any]] = [
        {
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": f"arn:aws:s3:::{b}",
            "Condition": {"StringLike": {"s3:prefix": list(dict.fromkeys(p))}},
        }
        for b, p in listing.items()
    ]
    objects = [f"arn:aws:s3:::{b}/{folder}*" for b, folder in places]
    statements.append(
        {
            "Effect": "Allow",
            "Action": READ_ACTIONS if mode == "read" else WRITE_ACTIONS,
            "Resource": objects[0] if len(objects) == 1 else objects,
        }
    )
    return {"Version": "2012-10-17", "Statement": statements}


def compact(document: Mapping[str, Any]) -> str:
    """The policy as the shortest JSON text (what counts against STS's size limit)."""
    return json.dumps(document, separators=(",", ":"))


def _client(loc: Location, service: str) -> Any:
    import botocore.session

    opts = {k.upper(): v for k, v in loc.options.items()}
    session = botocore.session.get_session()
    return session.create_client(
        service,
        region_name=opts.get(AWS_REGION) or session.get_config_variable("region") or "us-east-1",
        endpoint_url=opts.get(AWS_ENDPOINT_URL) or None,
        aws_access_key_id=opts.get(AWS_ACCESS_KEY_ID) or None,
        aws_secret_access_key=opts.get(AWS_SECRET_ACCESS_KEY) or None,
        aws_session_token=opts.get(AWS_SESSION_TOKEN) or None,
    )


def vend(
    lake: Lake,
    dataset: str | None,
    *,
    mode: str,
    ttl: timedelta,
    role_arn: str,
    session_name: str | None = None,
    archive: bool = False,
) -> Credentials:
    """See `Lake.credentials`."""
    if not isinstance(ttl, timedelta) or not MIN_TTL <= ttl <= MAX_TTL:
        raise InvalidInputError(f"ttl must be between 15 minutes and 12 hours, got {ttl!r}")
    if not role_arn or not str(role_arn).startswith("arn:"):
        raise InvalidInputError(
            f"role_arn must be a role's ARN (arn:aws:iam::...), got {role_arn!r}"
        )
    where = lake.archive.location if archive else None
    if archive and where is None:
        raise InvalidInputError("archive=True needs a lake connected with an archive_uri")
    document = policy_document(lake.root, dataset, mode=mode, archive=where)
    name = session_name or f"lakever-{mode}-{dataset or 'lake'}"[:64]
    try:
        answer = _client(lake.root, "sts").assume_role(
            RoleArn=role_arn,
            RoleSessionName=name,
            Policy=compact(document),
            DurationSeconds=int(ttl.total_seconds()),
        )
    except Exception as exc:
        raise storage_error(f"assume role {role_arn} for", lake.uri, exc) from exc
    got = answer["Credentials"]
    opts = {k: v for k, v in lake.root.options.items() if k.upper() not in _SECRETS}
    creds = Credentials(
        {
            **opts,
            AWS_ACCESS_KEY_ID: got["AccessKeyId"],
            AWS_SECRET_ACCESS_KEY: got["SecretAccessKey"],
            AWS_SESSION_TOKEN: got["SessionToken"],
        }
    )
    creds.expires_at = got.get("Expiration")
    creds.dataset = dataset
    creds.mode = mode
    return creds


_callers: dict[tuple[tuple[str, str], ...], str | None] = {}
_callers_lock = threading.Lock()


def caller(loc: Location) -> str | None:
    """Who the credentials of `loc` are (STS GetCallerIdentity's ARN), asked once; None locally.

    None also when STS cannot tell (no permission, no network): the caller
    falls back to the OS user.
    """
    if loc.is_local:
        return None
    key = tuple(sorted(loc.options.items())) + loc._environment()
    with _callers_lock:
        if key in _callers:
            return _callers[key]
    try:
        arn: str | None = str(_client(loc, "sts").get_caller_identity()["Arn"])
    except Exception as exc:  # never fail a commit over its author
        log.debug(
            "STS GetCallerIdentity failed (%s); the author is the OS user", type(exc).__name__
        )
        arn = None
    with _callers_lock:
        _callers[key] = arn
    return arn


def duckdb_secret(options: Mapping[str, str], *, name: str = "lakever") -> str:
    """A DuckDB ``CREATE SECRET`` statement for these storage options (S3 keys, endpoint)."""
    opts = {k.upper(): v for k, v in options.items()}

    def q(value: str) -> str:
        return "'" + str(value).replace("'", "''") + "'"

    parts = ["TYPE s3", "PROVIDER config"]
    if opts.get(AWS_ACCESS_KEY_ID):
        parts.append(f"KEY_ID {q(opts[AWS_ACCESS_KEY_ID])}")
        parts.append(f"SECRET {q(opts.get(AWS_SECRET_ACCESS_KEY, ''))}")
    if opts.get(AWS_SESSION_TOKEN):
        parts.append(f"SESSION_TOKEN {q(opts[AWS_SESSION_TOKEN])}")
    parts.append(f"REGION {q(opts.get(AWS_REGION) or 'us-east-1')}")
    endpoint = opts.get(AWS_ENDPOINT_URL)
    if endpoint:
        host = endpoint.split("://", 1)[-1].rstrip("/")
        parts.append(f"ENDPOINT {q(host)}")
        parts.append("URL_STYLE 'path'")
        parts.append(f"USE_SSL {'false' if endpoint.startswith('http://') else 'true'}")
    if not name.replace("_", "").isalnum():
        raise InvalidInputError(f"a DuckDB secret name is letters, digits and '_', got {name!r}")
    return f"CREATE OR REPLACE SECRET {name} ({', '.join(parts)})"


class LakeAccess:
    """The `Lake` methods for scoped access."""

    def access_policy(
        self, dataset: str | None = None, *, mode: str = "read", archive: bool = False
    ) -> dict[str, Any]:
        """An IAM policy document that reads (or writes) one dataset, or the whole lake.

        Use it as a role's identity policy or as a session policy: two
        statements per location (a prefix-limited ``s3:ListBucket`` and the
        object actions on the dataset's folder), at most 1,000 characters.

        Args:
            dataset: the dataset (None: every dataset of the lake).
            mode: "read" (get and list) or "write" (also put, delete, multipart).
            archive: also the dataset's folder in the archive location.

        Raises:
            InvalidInputError: a local lake, or an unknown mode.
        """
        from lakever.catalog import Lake

        assert isinstance(self, Lake)
        where = self.archive.location if archive else None
        if archive and where is None:
            raise InvalidInputError("archive=True needs a lake connected with an archive_uri")
        return policy_document(self.root, dataset, mode=mode, archive=where)

    def credentials(
        self,
        dataset: str | None,
        *,
        role_arn: str,
        mode: str = "read",
        ttl: timedelta = timedelta(hours=1),
        session_name: str | None = None,
        archive: bool = False,
    ) -> Credentials:
        """Temporary credentials that can only read (or write) one dataset.

        Calls STS ``AssumeRole`` on `role_arn` with `access_policy(dataset,
        mode=mode)` as the session policy, so the credentials can do at most
        what both the role and the policy allow. The result is storage options
        that `lv.connect`, deltalake and Polars take as they are
        (`lakever.spark.s3a_conf` and `lakever.access.duckdb_secret` turn them
        into Spark and DuckDB settings); its repr hides the secrets.

        Raises:
            InvalidInputError: a local lake, a ttl outside 15 min..12 h, no ARN.
            AccessDeniedError: the caller may not assume the role.
        """
        from lakever.catalog import Lake

        assert isinstance(self, Lake)
        return vend(
            self,
            dataset,
            mode=mode,
            ttl=ttl,
            role_arn=role_arn,
            session_name=session_name,
            archive=archive,
        )
