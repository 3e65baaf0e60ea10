"""Claims: who is writing a table version past HEAD, and whether it may still publish.

Every table version a commit writes carries a *claim* in its Delta commit
metadata: the seq it is for, and the writer (host, pid, attempt id). A writer
that finds a version past HEAD must tell a live writer's in-flight version
(wait) from an orphan (neutralise it). A process that is alive is not proof
that its attempt is: a commit that failed in a notebook or an ETL service
leaves a live process behind. So each attempt holds an exclusive `flock` on a
small host-local file named after it for exactly as long as it may publish:

- the lock is taken before the first table write and released, and the file
  removed, when the attempt ends for any reason (publish, conflict, error,
  KeyboardInterrupt), after it has tried to undo its own versions;
- the kernel releases it when the process dies, however it dies.

Another process on the same host asks the lock, not the pid. Claims from
other hosts (or without a lock) fall back to the pid on this host and to an
age limit across hosts (`$LAKEVER_CLAIM_TIMEOUT`, 60 s). A wrong judgement is
never unsafe: exact-version writes and the put-if-absent publish mean a
neutralised writer simply fails to publish and retries.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

META_SEQ = "lakever.seq"
META_WRITER = "lakever.writer"
META_ATTEMPT = "lakever.attempt"
META_LOCK = "lakever.lock"

#: Seconds after which a claim from another host counts as abandoned.
CLAIM_TIMEOUT_ENV = "LAKEVER_CLAIM_TIMEOUT"

HOST = socket.gethostname()
_LOCK_DIR = os.path.join(tempfile.gettempdir(), "lakever-claims")
_ACTIVE: set[str] = set()  # attempt ids of this process still in flight
_ACTIVE_LOCK = threading.Lock()


def env_seconds(name: str, default: float) -> float:
    """A number of seconds from the environment, or the default."""
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _lock_path(attempt: str) -> str:
    return os.path.join(_LOCK_DIR, f"{attempt}.lock")


class Attempt:
    """One try at one commit: its claim metadata and its liveness lock.

    Use as a context manager around the table writes and the publish.
    """

    def __init__(self, seq: int) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.seq = seq
        self._fd: int | None = None

    @property
    def claim(self) -> dict[str, str]:
        """The commit metadata every table version of this attempt carries."""
        return {
            META_SEQ: str(self.seq),
            META_WRITER: f"{HOST}:{os.getpid()}:{self.id}",
            META_ATTEMPT: self.id,
            META_LOCK: "1" if self._fd is not None else "0",
        }

    def __enter__(self) -> Attempt:
        with _ACTIVE_LOCK:
            _ACTIVE.add(self.id)
        self._fd = _take_lock(self.id)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self.id)
        if self._fd is not None:
            # Remove the file before unlocking: a checker that opens it later
            # finds nothing (dead); one that opened it earlier finds the lock
            # held until the close below, then free (dead).
            with contextlib.suppress(OSError):
                os.unlink(_lock_path(self.id))
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _take_lock(attempt: str) -> int | None:
    if fcntl is None:
        return None
    try:
        os.makedirs(_LOCK_DIR, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(_LOCK_DIR, 0o1777)  # writers of other users share it, like /tmp
        fd = os.open(_lock_path(attempt), os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:
        return None  # no lock: others judge this claim by pid and age instead
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _lock_held(attempt: str) -> bool | None:
    """Whether the attempt's lock is held; None if this host cannot tell."""
    if fcntl is None:
        return None
    try:
        fd = os.open(_lock_path(attempt), os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    else:
        # Left by a process that died: nobody will take this lock again (the
        # claim exists only because its owner had locked it first), so tidy up.
        with contextlib.suppress(OSError):
            os.unlink(_lock_path(attempt))
    finally:
        os.close(fd)
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_live(info: Mapping[str, Any], head_seq: int, *, max_age: float | None = None) -> bool:
    """Whether a table version past HEAD (its commit info) may still be published.

    `max_age`: seconds after which a claim from another host counts as
    abandoned (default `$LAKEVER_CLAIM_TIMEOUT`, 60 s).
    """
    try:
        seq = int(info.get(META_SEQ, -1))
    except ValueError:
        return False
    if seq <= head_seq:
        return False  # its writer aimed at a seq that is already taken
    if seq > head_seq + 1:
        return True  # our HEAD is stale; re-read before judging
    host, _, rest = str(info.get(META_WRITER, "")).partition(":")
    pid_text, _, attempt = rest.partition(":")
    if host == HOST and pid_text.isdigit():
        if int(pid_text) == os.getpid():
            with _ACTIVE_LOCK:
                return attempt in _ACTIVE
        if info.get(META_LOCK) == "1":
            held = _lock_held(attempt)
            if held is not None:
                return held
        return _pid_alive(int(pid_text))
    stamp = float(info.get("timestamp", 0)) / 1000.0
    limit = env_seconds(CLAIM_TIMEOUT_ENV, 60.0) if max_age is None else max_age
    return time.time() - stamp < limit
