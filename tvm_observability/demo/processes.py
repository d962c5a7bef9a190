"""Child processes for the demo, the benchmarks and the tests: one way to start a process, collect what it
writes, wait for it to say something, and stop it (ChildProcess); and on top of it one way to run a
`telemetry_aggregator` (AggregatorProcess): start it with a config, wait for its `listening` log record, know the
URL it bound (port 0 resolved), stop it.

The aggregator logs JSON lines on stderr; the `listening` record carries the bound addresses and the
scheme. Every line is kept (optionally only the last `keep`), parsed records too, and optionally copied to
a log file.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

CLI_MODULE = "tvm_observability.aggregator.cli"
LISTENING = "listening"
"""The message of the aggregator's log record once its socket is bound (aggregator/cli.py)."""

_T = TypeVar("_T")
_Child = TypeVar("_Child", bound="ChildProcess")


class AggregatorStartError(RuntimeError):
    """The aggregator exited, or did not log `listening` in time; the message ends with its output."""


def aggregator_command(
    config: Path | None = None, *, listen: str | None = None, entry: Sequence[str] = (CLI_MODULE,)
) -> list[str]:
    """`python -m <entry> [--listen L] [--config C]` with this interpreter; `entry` may name a wrapper module
    and its arguments (the benchmarks' handler variants)."""
    args = [sys.executable, "-m", *entry]
    if listen is not None:
        args += ["--listen", listen]
    if config is not None:
        args += ["--config", str(config)]
    return args


def listening_url(record: Mapping[str, Any]) -> str | None:
    """The base URL (`http://127.0.0.1:PORT`, https with TLS) from the `listening` record, else None."""
    if record.get("message") != LISTENING:
        return None
    context = record["context"]
    return f"{context.get('scheme', 'http')}://{context['addresses'][0]}"


STOP_TIMEOUT_S = 20.0
"""How long a stop waits for a process to exit on its signal before it SIGKILLs it."""


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
    """Send `sig` (unless it has exited), wait `timeout` s, SIGKILL what is still running; the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(10)


class ChildProcess:
    """One child process: `launch()` starts (or starts again) `args` with `env` (default: this process's
    environment) in `cwd`; a reader thread keeps every line it writes, stdout and stderr together (only the last
    `keep` if set; copied to `log_file` if set); `wait_until` waits for a condition on that output; `stop()`
    sends a signal and SIGKILLs what does not exit in time. `popen` passes further subprocess.Popen options
    (start_new_session, preexec_fn). As a context manager it is launched on entry and killed on exit.
    """

    stop_timeout_s = STOP_TIMEOUT_S

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        keep: int | None = None,
        log_file: Path | None = None,
        **popen: Any,
    ) -> None:
        self.args = list(args)
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.log_file = log_file
        self.popen = popen
        self.proc: subprocess.Popen[str] | None = None
        self._changed = threading.Condition()  # notified at each line read and at the end of the output
        self._ended = False
        self._reader: threading.Thread | None = None

    def launch(self) -> None:
        """Start the process (again: the previous run's output is read to its end and forgotten first)."""
        if self._reader is not None:
            self._reader.join(10)
        with self._changed:
            self._forget()
            self._ended = False
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",  # a stray non-UTF-8 byte must not end the reader (the pipe would fill, the child block)
            env=self.env,
            cwd=self.cwd,
            **self.popen,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()

    def _forget(self) -> None:
        """Drop what the previous run wrote (a subclass drops what it derived from it too)."""
        self.lines.clear()

    def _line(self, line: str) -> None:
        """Each line read, in order, on the reader thread, after it was kept (a subclass parses it here)."""

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with contextlib.ExitStack() as stack:
            copy: IO[str] | None = None
            if self.log_file is not None:
                copy = stack.enter_context(self.log_file.open("a", encoding="utf-8"))
            for line in proc.stdout:
                with self._changed:
                    self.lines.append(line)
                    self._line(line)
                    self._changed.notify_all()
                if copy is not None:
                    copy.write(line)
                    copy.flush()
        with self._changed:
            self._ended = True  # end of output: the process exits (or closed its stdout and stderr)
            self._changed.notify_all()

    @property
    def ended(self) -> bool:
        """Whether the output of this run has ended (the process exits)."""
        return self._ended

    def wait_until(self, condition: Callable[[], _T], timeout: float) -> _T | None:
        """Wait until `condition()` is truthy, looking again at each line the process writes; its value, or None
        when the output ended (the process exits) or `timeout` s passed first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (value := condition()):
                remaining = deadline - time.monotonic()
                if self._ended or remaining <= 0:
                    return None
                self._changed.wait(remaining)
            return value

    @property
    def output(self) -> str:
        """Every kept line, as one text."""
        with self._changed:
            return "".join(self.lines)

    def tail(self, lines: int = 30) -> str:
        """The last `lines` lines the process wrote."""
        with self._changed:
            return "".join(list(self.lines)[-lines:])

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit by itself; its exit code (subprocess.TimeoutExpired after `timeout` s)."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int:
        """Send `sig`, wait `timeout` s (stop_timeout_s), SIGKILL what is still running; the exit code. Returns
        once the output is read to its end."""
        assert self.proc is not None
        code = stop_process(self.proc, sig, self.stop_timeout_s if timeout is None else timeout)
        if self._reader is not None:
            self._reader.join(10)
        return code

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    def __enter__(self: _Child) -> _Child:
        self.launch()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class AggregatorProcess(ChildProcess):
    """One aggregator process: `start()` returns its URL once it listens; `stop()` ends it.

    `args` is the whole command (see aggregator_command; a caller may prefix it, e.g. with taskset); the other
    arguments are ChildProcess's. Its JSON log records are parsed as they come (`records`, bounded by `keep`).
    """

    def __init__(self, args: Sequence[str], **options: Any) -> None:
        super().__init__(args, **options)
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=self.lines.maxlen)
        self.url = ""
        self._listening = False

    @property
    def port(self) -> int:
        return int(self.url.rpartition(":")[2])

    def start(self, timeout: float = 30.0) -> str:
        """Start (or start again) and wait for the `listening` record; return the URL. Raises
        AggregatorStartError if it exits first or does not listen within `timeout` s (then it is killed)."""
        self.launch()
        assert self.proc is not None
        if self.wait_until(lambda: self._listening, timeout):
            return self.url
        if not self.ended:  # still writing, yet not listening
            self.stop(signal.SIGKILL)
            raise AggregatorStartError(f"aggregator did not listen within {timeout:g} s: {self.tail()}")
        try:  # its output ended: it exits
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            code = self.stop(signal.SIGKILL)
        raise AggregatorStartError(f"aggregator exited with {code}: {self.tail()}")

    def _forget(self) -> None:
        super()._forget()
        self.records.clear()
        self._listening = False  # self.url keeps the previous run's URL until this run logs its own

    def _line(self, line: str) -> None:
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict):
                self.records.append(record)
                url = listening_url(record)
                if url and not self._listening:
                    self.url, self._listening = url, True

    def find_log(self, message: str) -> dict[str, Any] | None:
        """The first kept log record with this message."""
        return next((r for r in list(self.records) if r.get("message") == message), None)
