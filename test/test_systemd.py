"""The systemd units (the single aggregator's and the sharded template's) pass `systemd-analyze verify`, with their
shipped drop-ins applied, and keep a low `systemd-analyze security` exposure; the template differs from the single
unit only where an instance must; the log-file drop-ins write where Filebeat reads."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from peers import require_binary
from support import REPO

UNIT = REPO / "config" / "systemd" / "telemetry-aggregator.service"
TEMPLATE = REPO / "config" / "systemd" / "telemetry-aggregator@.service"
DROP_IN = "log-file.conf"
"""The drop-in of each unit (in <unit>.d/) that appends the service's own log to a file for Filebeat."""
INSTANCE = "telemetry-aggregator@s1a.service"
"""The template is verified as this instance."""
EXPOSURE_THRESHOLD = 2.0
"""systemd's scale: 0 (locked down) to 10 (unsafe); below 2 it calls the unit OK. docs/reliability.md has ours."""

pytestmark = pytest.mark.peer


@pytest.fixture
def systemd_analyze() -> str:
    return require_binary("systemd-analyze")


@pytest.fixture(params=[UNIT, TEMPLATE], ids=["single", "template"])
def unit_copy(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's console script (verify checks that it exists), and its
    shipped drop-ins beside it: systemd-analyze reads <unit>.d/*.conf from the unit's directory."""
    script = Path(sys.executable).with_name("telemetry_aggregator")
    if not script.exists():
        pytest.skip(f"{script} is not installed (pip install -e .)")
    unit: Path = request.param
    text = unit.read_text(encoding="utf-8").replace("/usr/local/bin/telemetry_aggregator", str(script))
    copy = tmp_path / (INSTANCE if unit == TEMPLATE else unit.name)
    copy.write_text(text, encoding="utf-8")
    drop_ins = tmp_path / f"{unit.name}.d"
    drop_ins.mkdir()
    for conf in _drop_in_dir(unit).glob("*.conf"):
        (drop_ins / conf.name).write_text(conf.read_text(encoding="utf-8"), encoding="utf-8")
    return copy


def _drop_in_dir(unit: Path) -> Path:
    return unit.with_name(unit.name + ".d")


def _verify(systemd_analyze: str, unit_copy: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze, "verify", unit_copy.name], cwd=unit_copy.parent, capture_output=True, text=True, check=False
    )


def test_unit_passes_systemd_analyze_verify(systemd_analyze: str, unit_copy: Path) -> None:
    result = _verify(systemd_analyze, unit_copy)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # no warnings either


def test_verify_reads_the_shipped_drop_in(systemd_analyze: str, unit_copy: Path) -> None:
    """The clean verify above covers the drop-in: the same copy with one bad line in it is reported by name."""
    conf = next(unit_copy.parent.glob(f"*.d/{DROP_IN}"))
    conf.write_text(conf.read_text(encoding="utf-8") + "NoSuchSetting=1\n", encoding="utf-8")
    result = _verify(systemd_analyze, unit_copy)
    assert f"{conf.name}:" in result.stderr and "NoSuchSetting" in result.stderr, result.stderr


def _log_file(unit: Path) -> str:
    """Where the unit's log-file drop-in appends stderr."""
    lines = (_drop_in_dir(unit) / DROP_IN).read_text(encoding="utf-8").splitlines()
    assert "[Service]" in lines
    (value,) = [line.split("=", 1)[1] for line in lines if line.startswith("StandardError=")]
    assert value.startswith("append:"), value  # never truncated by a restart
    return value.removeprefix("append:")


def _logs_directory(unit: Path) -> str:
    (value,) = [
        line.split("=", 1)[1]
        for line in unit.read_text(encoding="utf-8").splitlines()
        if line.startswith("LogsDirectory=")
    ]
    return f"/var/log/{value}/"


def test_the_log_file_is_the_one_filebeat_reads() -> None:
    """The single unit's file is the path of Filebeat's service-log input, inside the unit's LogsDirectory=."""
    filebeat = yaml.safe_load((REPO / "config" / "filebeat" / "filebeat.yml").read_text(encoding="utf-8"))
    (service_log,) = [i for i in filebeat["filebeat.inputs"] if i["id"] == "tvm-aggregator-log"]
    path = _log_file(UNIT)
    assert path in service_log["paths"]
    assert path.startswith(_logs_directory(UNIT))


def test_each_template_instance_logs_to_a_file_of_its_own() -> None:
    """Instances share LogsDirectory=: one file each (%i), beside the single unit's, never one for several writers."""
    path = _log_file(TEMPLATE)
    assert path.startswith(_logs_directory(TEMPLATE))
    assert "%i" in path
    assert path.replace("-%i", "") == _log_file(UNIT)


def test_unit_exposure_is_low(systemd_analyze: str, unit_copy: Path) -> None:
    """`--offline` reads the unit file alone, so this runs in containers without systemd as PID 1."""
    result = subprocess.run(
        [systemd_analyze, "security", "--offline=true", f"--threshold={int(EXPOSURE_THRESHOLD * 10)}", unit_copy.name],
        cwd=unit_copy.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    print(f"\nsystemd-analyze security exposure: {match.group(1)}")
    assert float(match.group(1)) < EXPOSURE_THRESHOLD, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_template_is_the_single_unit_but_for_the_instance() -> None:
    """One hardening, one restart policy: a template line differs only by naming its instance (%i)."""

    def settings(path: Path) -> list[str]:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]

    single, template = settings(UNIT), settings(TEMPLATE)
    assert len(single) == len(template)
    differing = [(a, b) for a, b in zip(single, template, strict=True) if a != b]
    assert [b.split("=", 1)[0] for _, b in differing] == ["Description", "ExecStart", "StateDirectory"]
    assert all("%i" in b for _, b in differing)
