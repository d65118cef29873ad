"""The Debian package, built from this checkout by scripts/build-deb (dpkg-buildpackage) and
installed by dpkg into a scratch root (its maintainer scripts run with DPKG_ROOT), then used:
the installed command under Debian's /usr/bin/python3, its configuration, a real message, and
its systemd units verified by systemd inside that root (ExecStart and man page must exist).

About 25 s (most of it byte-compiling the bundled libraries); `-m "not package"` leaves it out."""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from scattergate import __version__
from tests.conftest import require_binary
from tests.support.sink import free_port

pytestmark = pytest.mark.package
ROOT = Path(__file__).resolve().parents[2]
UNITS = ["scattergate", "scattergate-milter", "scattergate-policy", "scattergate-srs"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    for tool in ("dpkg-buildpackage", "dpkg", "python3"):
        require_binary(tool)
    if not os.path.exists("/usr/bin/python3"):
        pytest.fail("the package runs on /usr/bin/python3 (Debian's python3)")
    out = tmp_path_factory.mktemp("deb")
    built = subprocess.run([str(ROOT / "scripts/build-deb"), str(out)], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "BUILD_PYTHON": sys.executable})
    assert built.returncode == 0, built.stderr[-3000:]
    deb = Path(built.stdout.split()[-1])
    assert deb.name == f"scattergate_{__version__}_amd64.deb"
    root = tmp_path_factory.mktemp("root")
    for directory in ("var/lib/dpkg/updates", "var/lib/dpkg/info", "etc"):
        (root / directory).mkdir(parents=True)
    (root / "var/lib/dpkg/status").touch()
    dpkg = ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", "--log=/dev/null"]
    result = subprocess.run([*dpkg, "-i", str(deb)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    yield root


def run(root: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(root / "usr/bin/scattergate"), *args], capture_output=True, text=True,
                          timeout=120, **kwargs)  # type: ignore[call-overload]


def test_the_installed_command_runs_on_debians_python(installed: Path) -> None:
    assert (installed / "usr/bin/scattergate").read_text().startswith("#!/usr/bin/python3 -I\n")
    result = run(installed, "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"scattergate {__version__}"


def test_the_installed_configuration_passes_check_config(installed: Path) -> None:
    result = run(installed, "check-config", "--config", str(installed / "etc/scattergate/scattergate.toml"))
    assert result.returncode == 0, result.stderr
    assert 'data_dir = "/var/lib/scattergate"' in result.stdout
    assert 'file = "/var/log/scattergate/scattergate.log"' in result.stdout


def test_the_installed_gateway_takes_a_message(installed: Path, tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen([str(installed / "usr/bin/scattergate"), "serve", "--listen", f"127.0.0.1:{port}",
                                "--data-dir", str(tmp_path / "data"), "--http-listen", ""],
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "listening on" in line:
                break
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("someone@example.org", ["postmaster@localhost"], b"Subject: hi\r\n\r\nhello\r\n")
    finally:
        process.terminate()
        assert process.wait(30) == 0
    assert len(list((tmp_path / "data/maildir/localhost/postmaster/new").iterdir())) == 1


def test_the_maintainer_scripts_made_the_user_and_locked_the_configuration(installed: Path) -> None:
    passwd = (installed / "etc/passwd").read_text()
    assert "scattergate:x:" in passwd and ":/var/lib/scattergate:/usr/sbin/nologin" in passwd
    gid = next(int(line.split(":")[2]) for line in (installed / "etc/group").read_text().splitlines()
               if line.startswith("scattergate:"))
    for path, mode in (("etc/scattergate", 0o750), ("etc/scattergate/scattergate.toml", 0o640)):
        info = (installed / path).stat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, gid, mode), path
    status = subprocess.run(["dpkg", f"--root={installed}", "-s", "scattergate"], capture_output=True, text=True)
    assert "/etc/scattergate/scattergate.toml" in status.stdout and "/etc/logrotate.d/scattergate" in status.stdout


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_verifies_each_installed_unit_with_its_command_and_manual(installed: Path, unit: str) -> None:
    analyze = require_binary("systemd-analyze")
    # systemd resolves the unit's dependencies and /bin/kill inside the root: give it the host's.
    if not (installed / "bin/kill").exists():
        (installed / "bin").mkdir(exist_ok=True)
        shutil.copy2("/bin/kill", installed / "bin/kill")
        for target in Path("/lib/systemd/system").glob("*.target"):
            shutil.copy2(target, installed / "lib/systemd/system" / target.name)
    result = subprocess.run([analyze, "verify", f"--root={installed}", f"lib/systemd/system/{unit}.service"],
                            cwd=installed, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "MANPATH": str(installed / "usr/share/man")})
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_manual_and_the_completion_are_installed(installed: Path) -> None:
    shown = subprocess.run(["man", "-l", str(installed / "usr/share/man/man8/scattergate.8.gz")],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "MANWIDTH": "100"})
    assert "scattergate srs-socketmap" in shown.stdout
    completion = installed / "usr/share/bash-completion/completions/scattergate"
    assert "complete -F _scattergate scattergate" in completion.read_text()
    assert (installed / "usr/share/doc/scattergate/examples/scattergate.toml").exists()
