"""The README's Python snippets run, in order, and print what the README says they print."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def snippets() -> list[tuple[str, str | None]]:
    """Each Python block, with the text block that directly follows it (its output), if any."""
    text = README.read_text()
    blocks = [(m.group(1), m.group(2), m.start(), m.end()) for m in _FENCE.finditer(text)]
    out: list[tuple[str, str | None]] = []
    for i, (lang, body, _, end) in enumerate(blocks):
        if lang != "python":
            continue
        expected = None
        if i + 1 < len(blocks):
            nxt_lang, nxt_body, nxt_start, _ = blocks[i + 1]
            if nxt_lang == "text" and not text[end:nxt_start].strip():
                expected = nxt_body
        out.append((body, expected))
    return out


def _needs(body: str) -> set[str]:
    return {name for name in ("spark", "s3://my-bucket") if name in body}


def _run_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, Any]) -> int:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(README.parent / "examples", tmp_path / "examples")
    namespace: dict[str, Any] = {"__name__": "readme"}
    ran = 0
    for body, expected in snippets():
        if _needs(body) - set(env):
            continue
        namespace.update({k: v for k, v in env.items() if k == "spark"})
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(compile(body, "README.md", "exec"), namespace)
        if expected is not None:
            assert buffer.getvalue() == expected, body
        ran += 1
    return ran


def test_readme_snippets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    total = len(snippets())
    ran = _run_all(tmp_path, monkeypatch, {})
    assert ran >= total - 4  # only the two Spark and the two S3 snippets wait for the slow run
    assert sum(expected is not None for _, expected in snippets()) >= 3


@pytest.mark.slow
def test_readme_snippets_with_spark_and_s3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_server: Any, s3_client: Any
) -> None:
    from tests.test_engines import spark as spark_fixture

    s3_client.create_bucket(Bucket="my-bucket")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    session_gen = spark_fixture.__wrapped__()  # type: ignore[attr-defined]
    session = next(session_gen)
    try:
        ran = _run_all(tmp_path, monkeypatch, {"spark": session, "s3://my-bucket": True})
    finally:
        with contextlib.suppress(StopIteration):
            next(session_gen)
    assert ran == len(snippets())
