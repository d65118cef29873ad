"""scripts/lib/apt.sh, shared by scripts/serve and scripts/test. `missing_packages` asks the
real dpkg; `apt_install` runs against a recording apt-get placed first on PATH, because a real
install would change the machine the suite runs on (scripts/test itself runs it for real)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import require_binary

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def bash(program: str, path_prefix: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    return subprocess.run([require_binary("bash"), "-c", f"set -euo pipefail; source {SCRIPTS}/lib/apt.sh; {program}"],
                          capture_output=True, text=True, timeout=60, env=env)


def test_missing_packages_checks_files_and_installed_packages() -> None:
    require_binary("dpkg-query")
    result = bash("missing_packages dpkg: no-such-package-xyz: bash:/bin/bash absent-tool:/nonexistent/tool")
    assert result.stdout.split() == ["no-such-package-xyz", "absent-tool"]


def test_apt_install_waits_for_the_lock_and_says_what_it_installs(tmp_path: Path) -> None:
    log = tmp_path / "apt.log"
    stubs(tmp_path, log)
    result = bash("apt_install 'scripts/serve' python3-venv swaks", path_prefix=tmp_path)
    assert result.returncode == 0, result.stderr
    calls = [line.removeprefix("sudo ") for line in log.read_text().splitlines() if line.startswith("apt-get")]
    assert calls[0].startswith("apt-get -o DPkg::Lock::Timeout=600") and calls[0].endswith(" update")
    assert "-o DPkg::Lock::Timeout=600" in calls[1] and calls[1].endswith("install -y --no-install-recommends python3-venv swaks")
    assert "installing Debian packages for scripts/serve: python3-venv swaks" in result.stderr


def stubs(directory: Path, log: Path) -> None:
    for tool in ("apt-get", "sudo"):
        stub = directory / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n' + ('exec "$@"\n' if tool == "sudo" else ""))
        stub.chmod(0o755)


def run_serve_first_time(tmp_path: Path, has_ensurepip: bool) -> tuple[subprocess.CompletedProcess[str], str]:
    """scripts/serve in a checkout without .venv, with a python3 that has (or lacks) ensurepip;
    that python stops the script right after the apt step (exit 3) so nothing else is installed."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts/lib").mkdir(parents=True)
    for name in ("serve", "lib/apt.sh"):
        (checkout / "scripts" / name).write_text((SCRIPTS / name).read_text())
    (checkout / "scripts/serve").chmod(0o755)
    bin_dir, log = tmp_path / "bin", tmp_path / "apt.log"
    bin_dir.mkdir()
    stubs(bin_dir, log)
    python = bin_dir / "python-under-test"
    python.write_text('#!/bin/sh\n[ "$2" = "import ensurepip, venv" ] && exit %d\nexit 3\n' % (0 if has_ensurepip else 1))
    python.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(python)}
    result = subprocess.run([str(checkout / "scripts/serve")], capture_output=True, text=True, timeout=60, env=env)
    return result, log.read_text() if log.exists() else ""


def test_serve_installs_python3_venv_when_venv_cannot_work(tmp_path: Path) -> None:
    require_binary("swaks")
    result, apt_calls = run_serve_first_time(tmp_path, has_ensurepip=False)
    assert result.returncode == 3  # stopped by the test's python after the apt step
    assert "install -y --no-install-recommends python3-venv" in apt_calls
    assert ">>> installing Debian packages for scripts/serve: python3-venv" in result.stderr
    assert ">>> creating" in result.stderr


def test_serve_leaves_apt_alone_when_everything_is_there(tmp_path: Path) -> None:
    require_binary("swaks")
    result, apt_calls = run_serve_first_time(tmp_path, has_ensurepip=True)
    assert result.returncode == 3 and apt_calls == ""
