"""The only place opskit starts subprocesses.

Commands are argv lists, never a shell. A child's stderr is drained by a thread into a
bounded tail, so a chatty child can never block on a full pipe and an error can quote its
last lines. Children get a scrubbed environment: no variable that holds a resolved secret
(``env:`` references, ``OPSKIT_*``), and passwords only ever through a ``PGPASSFILE``.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import IO, Any

from opskit.core.errors import Cancelled, ConfigError, OpskitError
from opskit.core.log import get_logger
from opskit.core.redaction import redact_text, resolved_values

log = get_logger(__name__)

STDERR_TAIL_LINES = 20
MAX_ERROR_LINES = 1000
_SECRET_NAME_RE = re.compile(r"(PASSWORD|SECRET|TOKEN|PRIVATE_KEY|CREDENTIAL|^OPSKIT_)", re.I)
# Variables children need even though their names look secret-ish.
_KEEP = {"PGPASSFILE", "AWS_SHARED_CREDENTIALS_FILE", "GOOGLE_APPLICATION_CREDENTIALS"}


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment for a child: ours minus secrets, plus ``extra``.

    Removed: PGPASSWORD (passwords go through PGPASSFILE), variables whose names look
    secret, and any variable whose value equals a resolved secret.
    """
    secret_values = resolved_values()
    env = {
        name: value
        for name, value in os.environ.items()
        if name in _KEEP or (not _SECRET_NAME_RE.search(name) and value not in secret_values)
    }
    env.pop("PGPASSWORD", None)
    if extra:
        env.update(extra)
    return env


class Child:
    """A running subprocess whose stderr is collected into a bounded tail."""

    def __init__(self, argv: Sequence[str], popen: subprocess.Popen[bytes]) -> None:
        self.argv = list(argv)
        self.popen = popen
        self._tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        # Every "error:" line (bounded), for callers that judge errors one by one (drills).
        self.error_lines: list[str] = []
        self._drainer: threading.Thread | None = None
        if popen.stderr is not None:
            self._drainer = threading.Thread(target=self._drain, args=(popen.stderr,), daemon=True)
            self._drainer.start()

    @property
    def name(self) -> str:
        """Return the program's base name (``pg_dump``)."""
        return os.path.basename(self.argv[0])

    @property
    def stdin(self) -> IO[bytes]:
        """Return the child's stdin pipe."""
        assert self.popen.stdin is not None
        return self.popen.stdin

    @property
    def stdout(self) -> IO[bytes]:
        """Return the child's stdout pipe."""
        assert self.popen.stdout is not None
        return self.popen.stdout

    def _drain(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._tail.append(line)
                if "error:" in line and len(self.error_lines) < MAX_ERROR_LINES:
                    self.error_lines.append(redact_text(line))
                log.debug("child stderr", program=self.name, line=line)
        stream.close()

    def stderr_tail(self) -> str:
        """Return the last lines the child wrote to stderr, joined by ' | ', with secrets redacted."""
        if self._drainer is not None:
            self._drainer.join(timeout=5)
        return redact_text(" | ".join(self._tail))

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child and return its exit code."""
        returncode = self.popen.wait(timeout=timeout)
        if self._drainer is not None:
            self._drainer.join(timeout=5)
        return returncode

    def check(self, error: type[OpskitError], what: str, hint: str | None = None) -> None:
        """Wait; raise ``error`` with the stderr tail when the child failed or was killed."""
        returncode = self.wait()
        if returncode == 0:
            return
        if returncode < 0:
            cause = f"{self.name} was killed by signal {signal.Signals(-returncode).name}"
        else:
            cause = f"{self.name} exited with code {returncode}"
        tail = self.stderr_tail()
        raise error(f"{what}: {cause}" + (f": {tail}" if tail else ""), hint=hint)

    def kill(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after 5 s) and reap it."""
        if self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@contextmanager
def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
) -> Iterator[Child]:
    """Start ``argv`` and yield the Child; if the block raises, the child is killed and reaped.

    The caller decides what a failure means by calling ``child.check(...)``. Raises
    ConfigError (exit 2) when the program cannot be started.
    """
    log.debug("starting", argv=redact_text(" ".join(argv)))
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=child_env(env),
            close_fds=True,
        )
    except OSError as exc:
        raise _cannot_start(argv, exc) from exc
    child = Child(argv, popen)
    try:
        yield child
    except BaseException:
        child.kill()
        raise
    finally:
        for stream in (popen.stdin, popen.stdout):
            if stream is not None and not stream.closed:
                with suppress(OSError):
                    stream.close()
        if popen.poll() is None:
            child.kill()


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
    timeout: float = 60,
    cancel: threading.Event | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to completion and return its result (stdout and stderr captured).

    Does not raise on a non-zero exit; raises ConfigError (exit 2) when the program cannot be
    started and OpskitError when it exceeds ``timeout`` seconds. With ``cancel`` (an operator's
    hook), the child runs in a process group of its own, and the whole group (a shell's
    children too) is stopped when ``cancel`` is set, raising Cancelled, at the timeout, or when
    the caller is interrupted: nothing it started outlives the run.
    """
    log.debug("running", argv=redact_text(" ".join(argv)))
    if cancel is not None:
        return _run_in_group(argv, env=env, input_bytes=input_bytes, timeout=timeout, cancel=cancel)
    try:
        return subprocess.run(
            list(argv),
            input=input_bytes,
            capture_output=True,
            env=child_env(env),
            timeout=timeout,
            check=False,
        )
    except OSError as exc:
        raise _cannot_start(argv, exc) from exc
    except subprocess.TimeoutExpired as exc:
        raise OpskitError(f"{argv[0]} did not finish within {timeout:.0f} s") from exc


def _cannot_start(argv: Sequence[str], exc: OSError) -> ConfigError:
    """Return the error for a program that cannot be started: the command names a wrong program (exit 2)."""
    return ConfigError(
        f"cannot start {argv[0]}: {exc.strerror or exc}",
        hint="check the command: the program must exist and be executable (an absolute path, or on PATH)",
    )


# How often a cancellable child's wait looks at the cancel event, and how long a stopped
# group gets between SIGTERM and SIGKILL.
_POLL_SECONDS = 0.2
_TERM_SECONDS = 3.0


def _run_in_group(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    input_bytes: bytes | None,
    timeout: float,
    cancel: threading.Event,
) -> subprocess.CompletedProcess[bytes]:
    """:func:`run` for a cancellable child: its own session, the group stopped on cancel, timeout or interrupt."""
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if input_bytes is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(env),
            close_fds=True,
            start_new_session=True,
        )
    except OSError as exc:
        raise _cannot_start(argv, exc) from exc
    deadline = time.monotonic() + timeout
    pending_input = input_bytes
    try:
        while True:
            try:
                stdout, stderr = popen.communicate(pending_input, timeout=_POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pending_input = None  # communicate() keeps sending what it was given first
            if cancel.is_set():
                _stop_group(popen)
                raise Cancelled(f"{argv[0]} was stopped: the run was cancelled (shutdown requested)")
            if time.monotonic() >= deadline:
                _stop_group(popen)
                raise OpskitError(f"{argv[0]} did not finish within {timeout:.0f} s")
    except BaseException:
        _stop_group(popen)  # an interrupt (KeyboardInterrupt, SystemExit) must not leave it behind
        raise
    return subprocess.CompletedProcess(list(argv), popen.returncode, stdout, stderr)


def _stop_group(popen: subprocess.Popen[bytes]) -> None:
    """Stop ``popen``'s process group: SIGTERM, SIGKILL after a few seconds; reap the child."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=_TERM_SECONDS)
    # The leader may be gone while the rest of its group lives on (a shell's background job).
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        popen.communicate(timeout=_TERM_SECONDS)
