"""One way to run a `telemetry_aggregator` process: start it with a config, wait for its `listening` log
record, know the URL it bound (port 0 resolved), stop it. The demo, the benchmarks and the tests use it.

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

CLI_MODULE = "tvm_observability.aggregator.cli"
LISTENING = "listening"
"""The message of the aggregator's log record once its socket is bound (aggregator/cli.py)."""


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


class AggregatorProcess:
    """One aggregator process: `start()` returns its URL once it listens; `stop()` ends it.

    `args` is the whole command (see aggregator_command; a caller may prefix it, e.g. with taskset).
    `keep` bounds the lines and records kept (None: all); `log_file` receives a copy of every line;
    `popen` passes further subprocess.Popen options (start_new_session, preexec_fn).
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        keep: int | None = None,
        log_file: Path | None = None,
        **popen: Any,
    ) -> None:
        self.args = list(args)
        self.env = dict(os.environ if env is None else env)
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self.log_file = log_file
        self.popen = popen
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self._ready = threading.Event()
        self._listening = self._ended = False
        self._reader: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.url.rpartition(":")[2])

    def start(self, timeout: float = 30.0) -> str:
        """Start (or start again) and wait for the `listening` record; return the URL. Raises
        AggregatorStartError if it exits first or does not listen within `timeout` s (then it is killed)."""
        if self._reader is not None:
            self._reader.join(10)  # the previous run's output is read to its end before this run's begins
        self.lines.clear()
        self.records.clear()
        self._listening = self._ended = False  # self.url keeps the previous run's URL until this run logs its own
        self._ready.clear()
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            **self.popen,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        self._ready.wait(timeout)
        if self._listening:
            return self.url
        if not self._ended:  # still writing, yet not listening
            self.stop(signal.SIGKILL)
            raise AggregatorStartError(f"aggregator did not listen within {timeout:g} s: {self.output()}")
        try:  # its output ended: it exits
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            code = self.stop(signal.SIGKILL)
        raise AggregatorStartError(f"aggregator exited with {code}: {self.output()}")

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with contextlib.ExitStack() as stack:
            copy: IO[str] | None = None
            if self.log_file is not None:
                copy = stack.enter_context(self.log_file.open("a", encoding="utf-8"))
            for line in proc.stdout:
                self.lines.append(line)
                if copy is not None:
                    copy.write(line)
                    copy.flush()
                with contextlib.suppress(json.JSONDecodeError):
                    record = json.loads(line)
                    if isinstance(record, dict):
                        self.records.append(record)
                        url = listening_url(record)
                        if url and not self._listening:
                            self.url, self._listening = url, True
                            self._ready.set()
        self._ended = True  # end of output: the process exits (or closed its stderr)
        self._ready.set()

    def output(self, lines: int = 30) -> str:
        """The last `lines` lines the process wrote."""
        return "".join(list(self.lines)[-lines:])

    def find_log(self, message: str) -> dict[str, Any] | None:
        """The first kept log record with this message."""
        return next((r for r in list(self.records) if r.get("message") == message), None)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send `sig`, wait `timeout` s, SIGKILL what is still running; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(10)
        return code
