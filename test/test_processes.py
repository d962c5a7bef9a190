"""demo/processes.py's ChildProcess, the one way the demo, the benchmarks and the tests run a child process:
real child Pythons, no ROS, no network."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from tvm_observability.demo.processes import ChildProcess


def python(code: str) -> list[str]:
    return [sys.executable, "-u", "-c", code]


def test_output_of_both_streams_is_collected_and_waited_for(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    code = "import sys, time; print('to stdout'); print('ready', file=sys.stderr); time.sleep(600)"
    with ChildProcess(python(code), log_file=log) as child:
        assert child.wait_until(lambda: "ready" in child.output, 60)
        assert child.stop() == -signal.SIGTERM
    assert child.output.splitlines() == ["to stdout", "ready"]
    assert log.read_text(encoding="utf-8") == child.output


def test_waiting_ends_when_the_child_exits_without_the_line() -> None:
    with ChildProcess(python("print('something else')")) as child:
        assert child.wait_until(lambda: "ready" in child.output, 600) is None
        assert child.ended and child.wait() == 0
    assert child.tail(1) == "something else\n"


def test_a_child_that_ignores_its_signal_is_killed() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ignoring'); time.sleep(600)"
    child = ChildProcess(python(code))
    with child:
        assert child.wait_until(lambda: "ignoring" in child.output, 60)
        assert child.stop(signal.SIGTERM, timeout=0.5) == -signal.SIGKILL


def test_launching_again_forgets_the_previous_run() -> None:
    child = ChildProcess(python("import os; print(os.getpid())"), keep=5)
    pids = []
    for _ in range(2):
        child.launch()
        assert child.wait() == 0
        assert child.stop() == 0  # output read to its end
        (line,) = child.output.splitlines()
        pids.append(int(line))
    assert pids[0] != pids[1]
