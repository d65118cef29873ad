"""The systemd units in contrib/systemd, judged by systemd's own tools (offline: no systemd
runs on the test machines, `systemd-analyze security --offline` reads the unit files)."""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import pytest

from scattergate.serve import DRAIN_SECONDS
from tests.conftest import require_binary

UNITS = sorted((Path(__file__).resolve().parents[2] / "contrib/systemd").glob("*.service"))


def service_section(unit: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(unit.read_text())
    return parser["Service"]


def test_a_unit_for_each_long_running_command() -> None:
    commands = {re.search(r"/usr/bin/scattergate (\S+)", service_section(u)["ExecStart"]).group(1)  # type: ignore[union-attr]
                for u in UNITS}
    assert commands == {"serve", "milter", "policy", "srs-socketmap"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_rates_the_unit_at_most_3_0(unit: Path) -> None:
    analyze = require_binary("systemd-analyze")
    result = subprocess.run([analyze, "security", "--offline=true", "--threshold=30", unit.name],
                            cwd=unit.parent, capture_output=True, text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert exposure, result.stdout + result.stderr
    assert float(exposure.group(1)) <= 3.0 and result.returncode == 0, result.stdout


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_the_unit_reloads_documents_itself_and_waits_for_the_drain(unit: Path) -> None:
    text = unit.read_text()
    service = service_section(unit)
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP: reload (serve), reopen logs (all)
    assert "Documentation=man:scattergate(8)" in text  # the package ships it (test_deb proves it)
    assert service["User"] == "scattergate" and service["NoNewPrivileges"] == "yes"
    if "srs-socketmap" not in service["ExecStart"]:  # the socketmap holds no sessions to drain
        assert float(service["TimeoutStopSec"]) > DRAIN_SECONDS
