"""Issue 15.7: `check-config` opens what the configuration names, like `postfix check`, and
`serve` refuses the same problems with one line naming the setting and the file or address —
never a traceback or a bare [Errno]. The systemd unit runs check-config before serve."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.sink import free_port

SECRET = "0123456789abcdef0123456789abcdef"


def _private(path: Path, text: str, mode: int) -> str:
    path.write_text(text)
    os.chmod(path, mode)
    return path.name


# (name, TOML for the case, files to create {name: (content, mode)}, words the error must name)
CASES = [
    ("batv keys readable by others", '[backscatter]\nbatv_keys_file = "batv.keys"\n',
     {"batv.keys": (f"0:{SECRET}\n", 0o644)}, ("backscatter.batv_keys_file", "batv.keys", "0644")),
    ("site secret readable by others", '[backscatter]\nsecret_file = "site.key"\n',
     {"site.key": (f"{SECRET}\n", 0o644)}, ("backscatter.secret_file", "site.key", "0644")),
    ("srs secrets readable by others", '[postfix]\nsrs_secrets_file = "srs.secrets"\n',
     {"srs.secrets": (f"{SECRET}\n", 0o640)}, ("postfix.srs_secrets_file", "srs.secrets")),
    ("missing recipients file", '[receive]\nrecipients_file = "missing.txt"\n',
     {}, ("receive.recipients_file", "missing.txt")),
    ("token readable by others", '[http]\nlisten = "127.0.0.1:{http}"\ntoken_file = "token"\n',
     {"token": (SECRET, 0o644)}, ("http.token_file", "token")),
    ("listen address not on this host", '[server]\nlisten = "192.0.2.1:{smtp}"\n',
     {}, ("server.listen", "192.0.2.1:")),
    ("http address not on this host", '[http]\nlisten = "192.0.2.1:{http}"\ntoken_file = "token"\n',
     {"token": (SECRET, 0o600)}, ("http.listen", "192.0.2.1:", "no interface")),
]


def _config(tmp_path: Path, toml: str, files: dict[str, tuple[str, int]]) -> None:
    for name, (text, mode) in files.items():
        _private(tmp_path / name, text, mode)
    base = {"server": f'[server]\nlisten = "127.0.0.1:{free_port()}"\n', "http": '[http]\nlisten = ""\n'}
    body = toml.format(smtp=free_port(), http=free_port())
    tables = "".join(text for section, text in base.items() if f"[{section}]" not in body)
    (tmp_path / "sg.toml").write_text(tables + body)


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize(("case", "toml", "files", "named"), CASES, ids=[c[0] for c in CASES])
def test_start_up_errors_name_the_setting_and_the_file(tmp_path: Path, command: str, case: str, toml: str,
                                                       files: dict[str, tuple[str, int]],
                                                       named: tuple[str, ...]) -> None:
    _config(tmp_path, toml, files)
    try:
        result = subprocess.run([sys.executable, "-m", "scattergate", command, "--config", "sg.toml",
                                 "--data-dir", "d"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{command} started with a broken configuration ({case})")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "[Errno" not in result.stderr, result.stderr
    (line,) = [l for l in result.stderr.splitlines() if "configuration error" in l]
    for word in named:
        assert word in line, line


def test_the_srs_socketmap_refuses_a_shared_srs_secret(tmp_path: Path) -> None:
    _private(tmp_path / "srs.secrets", f"{SECRET}\n", 0o644)
    result = subprocess.run([sys.executable, "-m", "scattergate", "srs-socketmap", "--srs-domain", "example.org",
                             "--secrets", "srs.secrets", "--listen", f"inet:127.0.0.1:{free_port()}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "postfix.srs_secrets_file" in result.stderr and "srs.secrets" in result.stderr


def test_a_good_configuration_still_passes_and_an_address_in_use_is_only_a_warning(tmp_path: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        (tmp_path / "rcpts").write_text("user@example.org\n")
        _private(tmp_path / "batv.keys", f"0:{SECRET}\n", 0o600)
        (tmp_path / "sg.toml").write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\n[http]\nlisten = ""\n'
            '[receive]\nrecipients_file = "rcpts"\n[backscatter]\nbatv_keys_file = "batv.keys"\n')
        result = subprocess.run([sys.executable, "-m", "scattergate", "check-config", "--config", "sg.toml",
                                 "--data-dir", "d"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"server.listen: 127.0.0.1:{port} is in use" in result.stderr
    assert not (tmp_path / "d").exists()  # checking creates nothing


CHECKED_UNITS = sorted(unit for unit in (Path(__file__).parents[2] / "contrib" / "systemd").glob("*.service")
                       if "ExecStartPre=" in unit.read_text())


@pytest.mark.parametrize("unit", CHECKED_UNITS, ids=lambda path: path.name)
def test_a_systemd_unit_checks_exactly_what_it_serves(unit: Path) -> None:
    """Built from contrib/systemd/*.service: check-config must see the service's own flags (the
    data directory decides where the site secret is), or it checks another configuration."""
    lines = dict(line.split("=", 1) for line in unit.read_text().splitlines()
                 if line.startswith(("ExecStartPre=", "ExecStart=")))
    assert CHECKED_UNITS  # the units exist where this test looks
    check, service = lines["ExecStartPre"].split(), lines["ExecStart"].split()
    assert check[1] == "check-config"
    assert check[0] == service[0] and check[2:] == service[2:]


@pytest.mark.parametrize("command", ["milter", "policy"])
def test_a_postfix_side_service_whose_address_is_taken_says_so(tmp_path: Path, command: str) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "scattergate", command, "--listen", f"inet:127.0.0.1:{port}",
                                 "--domain", "example.org", "--data-dir", "d", "--http-listen", ""],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "[Errno" not in result.stderr, result.stderr
    assert f"postfix.{command}_listen: cannot listen on inet:127.0.0.1:{port}: Address already in use" in result.stderr
