"""Log rotation and syslog, as an operator meets them: real processes, real signals, real
syslog listeners on loopback (a UDP socket, a unix datagram socket)."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.polling import wait_for
from tests.support.sink import free_port


def launch(command: list[str], cwd: Path) -> subprocess.Popen[str]:
    """Start `scattergate COMMAND...` and return once it logs that it is listening."""
    process = subprocess.Popen([sys.executable, "-m", "scattergate", *command],
                               cwd=cwd, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:  # readiness from the log, not a sleep
        if "listening on" in line:
            return process
    raise AssertionError(f"{command[0]} exited with {process.wait()} before listening")


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(30)


def send_mail(port: int, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", port) as client:
        for _ in range(count):
            client.sendmail("someone@example.org", ["postmaster@localhost"], b"Subject: hi\r\n\r\nhello\r\n")


def decisions(path: Path) -> int:
    return path.read_text().count(" decision ") if path.exists() else 0


def test_sigusr1_reopens_the_log_file_of_every_worker_after_rotation(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "sg.toml").write_text(f'[server]\nlisten = "127.0.0.1:{port}"\nworkers = 2\n[http]\nlisten = ""\n')
    process = launch(["serve", "--config", "sg.toml"], tmp_path)
    log, rotated = tmp_path / "scattergate-data/scattergate.log", tmp_path / "scattergate-data/scattergate.log.1"
    try:
        send_mail(port, 1)
        assert wait_for(lambda: decisions(log) == 1)
        log.rename(rotated)  # what logrotate does, then its postrotate signals us
        process.send_signal(signal.SIGUSR1)
        for _ in range(8):  # new connections, spread over both workers by the kernel
            send_mail(port, 1)
        assert wait_for(lambda: decisions(log) == 8)
        assert process.poll() is None
    finally:
        assert stop(process) == 0
    assert decisions(rotated) == 1  # nothing written to the renamed file after the signal
    assert decisions(log) == 8


def test_sighup_reloads_serve_and_reopens_its_log_file(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "sg.toml").write_text(f'[server]\nlisten = "127.0.0.1:{port}"\n[http]\nlisten = ""\n')
    process = launch(["serve", "--config", "sg.toml"], tmp_path)
    log = tmp_path / "scattergate-data/scattergate.log"
    try:
        log.rename(log.with_suffix(".log.1"))
        process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: log.exists() and "reloaded the configuration" in log.read_text())
    finally:
        assert stop(process) == 0


def test_sighup_reopens_the_policy_service_log_instead_of_killing_it(tmp_path: Path) -> None:
    # Before: SIGHUP (systemd's ExecReload, logrotate) had no handler in milter/policy and killed them.
    port = free_port()
    process = launch(["policy", "--listen", f"inet:127.0.0.1:{port}", "--data-dir", "d", "--domain", "example.org",
                      "--http-listen", ""], tmp_path)
    log = tmp_path / "d/scattergate.log"
    try:
        log.rename(tmp_path / "d/scattergate.log.1")
        process.send_signal(signal.SIGHUP)
        request = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.1\n"
                   b"sender=\nrecipient=prvs=0123456789=alice@example.org\n\n")  # forged tag: refused, logged
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(request)
            assert client.recv(1000).startswith(b"action=5")
        assert process.poll() is None
        assert wait_for(lambda: decisions(log) == 1)
    finally:
        assert stop(process) == 0


def test_syslog_over_udp_receives_every_line_with_the_mail_facility(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(30)
        port = free_port()
        process = launch(["serve", "--listen", f"127.0.0.1:{port}", "--data-dir", "d", "--http-listen", "",
                          "--syslog", f"127.0.0.1:{listener.getsockname()[1]}"], tmp_path)
        try:
            send_mail(port, 1)
            received = []
            while not any(b" decision " in line for line in received):
                received.append(listener.recv(65536))
        finally:
            assert stop(process) == 0
    # <22>: facility mail (2) * 8 + severity info (6); the tag carries the process id.
    assert all(re.match(rb"<22>scattergate\[\d+\]: INFO ", line) for line in received), received


def test_syslog_to_a_unix_socket(tmp_path: Path) -> None:
    secrets = tmp_path / "srs.secrets"
    secrets.write_text("a-long-enough-srs-secret\n")
    os.chmod(secrets, 0o600)
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(30)
        process = launch(["srs-socketmap", "--listen", f"inet:127.0.0.1:{free_port()}", "--srs-domain",
                          "srs.example.org", "--secrets", str(secrets), "--syslog", f"unix:{path}"], tmp_path)
        try:
            line = listener.recv(65536)
        finally:
            assert stop(process) == 0
    assert re.match(rb"<22>scattergate\[\d+\]: INFO .*listening on inet:127\.0\.0\.1:", line), line


def test_an_unreachable_syslog_socket_is_a_clear_configuration_error(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "scattergate", "serve", "--data-dir", "d", "--http-listen", "",
                             "--listen", f"127.0.0.1:{free_port()}", "--syslog", str(tmp_path / "no-such.sock")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "logging.syslog: cannot connect to" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_refuses_a_syslog_socket_nobody_listens_on(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "scattergate", "check-config", "--syslog", "unix:/nonexistent/log"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "logging.syslog: cannot connect to unix:/nonexistent/log" in result.stderr


def test_an_unknown_syslog_facility_is_refused_by_check_config(tmp_path: Path) -> None:
    (tmp_path / "sg.toml").write_text('[logging]\nsyslog = "127.0.0.1:514"\nsyslog_facility = "mial"\n')
    result = subprocess.run([sys.executable, "-m", "scattergate", "check-config", "--config", "sg.toml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "logging.syslog_facility" in result.stderr
