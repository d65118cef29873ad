"""`scattergate serve` as a user runs it: a real process, real signals."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.sink import free_port


def start(args: list[str], cwd: Path) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "scattergate", "serve", *args],
        cwd=cwd, stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:  # wait for the "listening" line: readiness, not a sleep
        match = re.search(r"listening on \S+ port (\d+)", line)
        if match:
            return process, int(match.group(1))
    raise AssertionError(f"serve exited with {process.wait()} before listening")


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(30)


def test_no_flags_serves_a_local_default(tmp_path: Path) -> None:
    # No flags at all: 127.0.0.1:2525 would clash between parallel runs, so only the port is
    # changed here, through the config file a user would use.
    (tmp_path / "sg.toml").write_text(f'[server]\nlisten = "127.0.0.1:{free_port()}"\n')
    process, port = start(["--config", "sg.toml"], tmp_path)
    try:
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("someone@example.org", ["postmaster@localhost"], b"Subject: hi\r\n\r\nhello\r\n")
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("someone@example.org", ["nobody@localhost"], b"Subject: hi\r\n\r\nhello\r\n")
    finally:
        assert stop(process) == 0
    delivered = list((tmp_path / "scattergate-data/maildir/localhost/postmaster/new").iterdir())
    assert len(delivered) == 1
    assert (tmp_path / "scattergate-data/state.sqlite3").exists()
    assert "decision" in (tmp_path / "scattergate-data/scattergate.log").read_text()


def test_default_listen_address_without_any_flag(tmp_path: Path) -> None:
    from scattergate.cli import build_parser, load_config

    config = load_config(build_parser().parse_args(["serve"]))
    assert config.server.listen == "127.0.0.1:2525"
    assert config.data_dir == Path("scattergate-data")


def test_unknown_config_key_is_reported_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[delivery]\nrelay_host = \"x\"\n")
    result = subprocess.run(
        [sys.executable, "-m", "scattergate", "serve", "--config", "bad.toml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "delivery.relay_host" in result.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "scattergate", "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", "d"],
            cwd=tmp_path, capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1
    assert "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_drains_a_session_in_flight(tmp_path: Path) -> None:
    process, port = start(["--listen", f"127.0.0.1:{free_port()}", "--data-dir", "d"], tmp_path)
    client = smtplib.SMTP("127.0.0.1", port)
    client.ehlo("client.example")
    client.mail("someone@example.org")
    client.rcpt("postmaster@localhost")
    process.send_signal(signal.SIGTERM)
    # The listener is closed, but the session in flight may finish its message.
    code, _ = client.data(b"Subject: late\r\n\r\nstill delivered\r\n")
    assert code == 250
    client.quit()
    assert process.wait(30) == 0
    assert len(list((tmp_path / "d/maildir/localhost/postmaster/new").iterdir())) == 1


def test_workers_share_the_port(tmp_path: Path) -> None:
    process, port = start(
        ["--listen", f"127.0.0.1:{free_port()}", "--data-dir", "d", "--workers", "2"], tmp_path
    )
    try:
        for _ in range(20):
            with smtplib.SMTP("127.0.0.1", port) as client:
                client.sendmail("someone@example.org", ["postmaster@localhost"], b"Subject: x\r\n\r\nx\r\n")
    finally:
        assert stop(process) == 0
    assert len(list((tmp_path / "d/maildir/localhost/postmaster/new").iterdir())) == 20
    pids = {int(m) for m in re.findall(r"\[(\d+)\] INFO decision", (tmp_path / "d/scattergate.log").read_text())}
    assert len(pids) >= 1 and os.getpid() not in pids


def test_check_config_prints_a_config_that_loads_back(tmp_path: Path) -> None:
    import tomllib

    from scattergate.config import from_dict
    from scattergate.config_check import validate

    result = subprocess.run(
        [sys.executable, "-m", "scattergate", "check-config", "--domain", "example.org", "--relay", "127.0.0.1:25"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    config = from_dict(tomllib.loads(result.stdout))
    validate(config)
    assert config.receive.domains == ["example.org"] and config.delivery.relay == "127.0.0.1:25"
    bad = subprocess.run([sys.executable, "-m", "scattergate", "check-config", "--listen", "nowhere"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "server.listen" in bad.stderr


def test_json_logs_carry_the_decision_fields(tmp_path: Path) -> None:
    import json

    (tmp_path / "sg.toml").write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n[logging]\nformat = "json"\n'
    )
    process, port = start(["--config", "sg.toml"], tmp_path)
    try:
        with smtplib.SMTP("127.0.0.1", port) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("someone@example.org", ["nobody@localhost"], b"Subject: x\r\n\r\nx\r\n")
    finally:
        assert stop(process) == 0
    entries = [json.loads(line) for line in (tmp_path / "scattergate-data/scattergate.log").read_text().splitlines()]
    (decision,) = [e["decision"] for e in entries if "decision" in e]
    assert decision["verdict"] == "reject" and decision["recipients"] == ["nobody@localhost"]
    assert decision["findings"] == ["recipient.unknown[nobody@localhost]"]


def test_sighup_reloads_the_configuration(tmp_path: Path) -> None:
    import queue
    import threading

    port = free_port()
    config = tmp_path / "sg.toml"
    config.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\n[receive]\ndomains = ["example.org"]\n')
    process = subprocess.Popen([sys.executable, "-m", "scattergate", "serve", "--config", "sg.toml"],
                               cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in process.stderr], daemon=True).start()  # type: ignore[union-attr]

    def wait_for_line(text: str) -> None:
        # Once per worker: by default one per core, and each reloads on its own.
        for _ in range(len(os.sched_getaffinity(0))):
            while text not in lines.get(timeout=30):
                pass

    def accepted(rcpt: str) -> bool:
        with smtplib.SMTP("127.0.0.1", port) as client:
            try:
                client.sendmail("someone@remote.example", [rcpt], b"Subject: x\r\n\r\nx\r\n")
                return True
            except smtplib.SMTPRecipientsRefused:
                return False

    try:
        wait_for_line("listening on")
        assert not accepted("carol@example.org")
        (tmp_path / "rcpts").write_text("carol@example.org\n")
        config.write_text(config.read_text() + 'recipients_file = "rcpts"\n')
        process.send_signal(signal.SIGHUP)
        wait_for_line("reloaded the configuration")
        assert accepted("carol@example.org")
        config.write_text("[server]\nbogus = 1\n")  # a broken file keeps the running config
        process.send_signal(signal.SIGHUP)
        wait_for_line("reload failed")
        assert accepted("carol@example.org")
    finally:
        assert stop(process) == 0


def test_workers_leave_when_the_parent_is_killed(tmp_path: Path) -> None:
    # Seen in the suite: after `kill -9` of the parent, both workers went on serving the port
    # for good, orphaned. They must drain and exit, as Postfix's daemons leave without master.
    from tests.support.polling import wait_for

    process, port = start(
        ["--listen", f"127.0.0.1:{free_port()}", "--data-dir", "d", "--workers", "2"], tmp_path
    )
    children_file = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    assert wait_for(lambda: len(children_file.read_text().split()) == 2)
    workers = [int(pid) for pid in children_file.read_text().split()]
    process.kill()
    process.wait(30)

    def gone(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        return state == "Z"  # exited, waiting for init to reap it

    assert wait_for(lambda: all(gone(pid) for pid in workers), timeout=30)
