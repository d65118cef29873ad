"""`scattergate queue list|flush|hold|release|delete` against a real gateway in spool mode and
a real downstream (smtp-sink) that is down, then up."""

from __future__ import annotations

import json
import re
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scattergate.cli import main
from scattergate.delivery.spool import Spool, SpooledRecipient, SpoolEntry
from tests.conftest import require_binary
from tests.support.polling import wait_for
from tests.support.sink import SmtpSink, free_port

MESSAGE = b"From: a@sender.example\r\nTo: user@example.org\r\nSubject: queued %s\r\n\r\nHello.\r\n"


def queue(data_dir: Path, *args: str) -> int:
    return main(["queue", *args, "--data-dir", str(data_dir)])


def listed(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> list[dict]:  # type: ignore[type-arg]
    capsys.readouterr()
    assert queue(data_dir, "list", "--json") == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def by_recipient(rows: list[dict]) -> dict[str, dict]:  # type: ignore[type-arg]
    return {row["recipients"][0]: row for row in rows}


def delivered_to(sink: SmtpSink) -> list[str]:
    return sorted(re.search(rb"X-Rcpt-Args: <([^>]+)>", m).group(1).decode() for m in sink.messages())  # type: ignore[union-attr]


def test_queue_tools_against_a_gateway_whose_downstream_is_down_then_up(  # type: ignore[no-untyped-def]
        gateway, make_config, tmp_path: Path, capsys) -> None:
    port = free_port()  # the downstream: nothing listens there yet
    config = make_config(
        receive={"domains": ["example.org"]},
        delivery={"relay": f"127.0.0.1:{port}", "verify_recipients": False, "relay_timeout": 5.0},
        # Retries an hour apart: what is delivered within this test was made due by the tools.
        spool={"enabled": True, "retry_initial": 3600.0, "retry_max": 3600.0},
    )
    data_dir = config.data_dir
    gw = gateway(config)
    for rcpt in ("keep@example.org", "drop@example.org", "flush@example.org"):
        with smtplib.SMTP(*gw.address) as client:
            client.sendmail("a@sender.example", [rcpt], MESSAGE % rcpt.encode())
    # Each was tried at once, found the downstream down, and was deferred by an hour.
    assert wait_for(lambda: [r["attempts"] for r in listed(data_dir, capsys)] == [1, 1, 1])
    rows = by_recipient(listed(data_dir, capsys))
    now = time.time()
    for row in rows.values():
        assert row["sender"] == "a@sender.example" and not row["held"]
        assert row["last_error"].startswith("4"), row  # the downstream's absence, as a 4xx
        assert row["next_attempt"] > now + 3000 and 0 <= row["age"] < 60
    assert queue(data_dir, "list") == 0
    text = capsys.readouterr()
    assert rows["keep@example.org"]["id"] in text.out and "3 message(s) queued, 0 held" in text.err

    keep, drop = rows["keep@example.org"]["id"], rows["drop@example.org"]["id"]
    assert queue(data_dir, "hold", keep) == 0
    assert by_recipient(listed(data_dir, capsys))["keep@example.org"]["held"] is True
    assert queue(data_dir, "delete", drop, "--yes") == 0
    assert sorted(by_recipient(listed(data_dir, capsys))) == ["flush@example.org", "keep@example.org"]

    sink = SmtpSink(require_binary("smtp-sink"), tmp_path / "sink", [])
    sink.port = port
    sink.start()  # the downstream is back
    try:
        assert queue(data_dir, "flush") == 0
        assert "woke 1 running delivery process" in capsys.readouterr().out
        assert wait_for(lambda: delivered_to(sink) == ["flush@example.org"] and len(listed(data_dir, capsys)) == 1)
        (left,) = listed(data_dir, capsys)
        assert left["id"] == keep and left["held"]  # held: not delivered by the flush

        assert queue(data_dir, "release", keep) == 0
        assert wait_for(lambda: listed(data_dir, capsys) == [])
        assert delivered_to(sink) == ["flush@example.org", "keep@example.org"]  # the deleted one never
    finally:
        sink.stop()


def make_spool(data_dir: Path, count: int) -> tuple[Spool, list[str]]:
    spool = Spool(data_dir / "spool")
    ids = []
    for n in range(count):
        entry = SpoolEntry("a@sender.example", [SpooledRecipient(f"user{n}@example.org")], time.time(),
                           next_attempt=time.time() + 3600)
        spool.put(entry, MESSAGE % str(n).encode())
        ids.append(entry.id)
    return spool, ids


def test_a_message_being_delivered_is_waited_for_then_changed(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    spool, (message_id,) = make_spool(tmp_path, 1)
    claim = spool.claim(message_id)  # a worker delivering it right now holds its lock
    assert claim is not None
    try:
        assert queue(tmp_path, "hold", message_id, "--wait", "0") == 1
        assert "being delivered" in capsys.readouterr().err
        assert queue(tmp_path, "delete", message_id, "--yes", "--wait", "0") == 1
        assert spool.ids() == [message_id]
    finally:
        claim.release()
    assert queue(tmp_path, "hold", message_id, "--wait", "0") == 0
    assert listed(tmp_path, capsys)[0]["held"] is True


def test_flush_makes_deferred_messages_due_and_leaves_held_ones(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    spool, (first, second, third) = make_spool(tmp_path, 3)
    assert queue(tmp_path, "hold", third) == 0
    assert queue(tmp_path, "flush", first) == 0
    out = capsys.readouterr().out
    assert "1 message(s) due now" in out and "no running gateway" in out
    due = {row["id"]: row["next_attempt"] for row in listed(tmp_path, capsys)}
    assert due[first] == 0.0 and due[second] > time.time() and due[third] is None
    assert queue(tmp_path, "flush") == 0
    due = {row["id"]: row["next_attempt"] for row in listed(tmp_path, capsys)}
    assert due[second] == 0.0 and due[third] is None  # held stays held


def test_delete_all_asks_first_and_unknown_ids_fail(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spool, ids = make_spool(tmp_path, 2)
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("n\n"))
    assert queue(tmp_path, "delete", "ALL") == 1
    assert "not deleted" in capsys.readouterr().err and len(spool.ids()) == 2
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("y\n"))
    assert queue(tmp_path, "delete", "ALL") == 0
    assert spool.ids() == [] and not list(spool.root.glob("*.json"))
    for action in ("hold", "release"):
        assert queue(tmp_path, action, "000000000000") == 1
    assert queue(tmp_path, "delete", "000000000000", "--yes") == 1
    assert queue(tmp_path, "flush", "000000000000") == 1
    assert "no queued message" in capsys.readouterr().err


def test_no_spool_is_a_clear_error(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert queue(tmp_path / "nothing", "list") == 2
    assert "no spool at" in capsys.readouterr().err


def test_flush_reaches_every_worker_of_a_served_gateway(tmp_path: Path) -> None:
    """`serve --workers 2` in spool mode, its downstream down then up: flush delivers at once."""
    sink_port = free_port()
    (tmp_path / "sg.toml").write_text(
        '[server]\nlisten = "127.0.0.1:%d"\nworkers = 2\n[receive]\ndomains = ["example.org"]\n'
        '[delivery]\nrelay = "127.0.0.1:%d"\nverify_recipients = false\nrelay_timeout = 5.0\n'
        '[spool]\nenabled = true\nretry_initial = 3600.0\nretry_max = 3600.0\n'
        '[state]\ndata_dir = "d"\n[http]\nlisten = ""\n' % (free_port(), sink_port))
    process = subprocess.Popen([sys.executable, "-m", "scattergate", "serve", "--config", "sg.toml"],
                               cwd=tmp_path, stderr=subprocess.DEVNULL)
    data_dir = tmp_path / "d"
    log = data_dir / "scattergate.log"
    try:
        assert wait_for(lambda: log.exists() and log.read_text().count("listening on") == 2)
        port = int(re.search(r"listening on \S+ port (\d+)", log.read_text()).group(1))  # type: ignore[union-attr]
        for n in range(6):
            with smtplib.SMTP("127.0.0.1", port) as client:
                client.sendmail("a@sender.example", [f"user{n}@example.org"], MESSAGE % str(n).encode())
        spool = Spool(data_dir / "spool")
        assert wait_for(lambda: log.read_text().count("deferred, next attempt") == 6)
        assert len(list((data_dir / "spool" / "wake").iterdir())) == 2  # one per worker
        sink = SmtpSink(require_binary("smtp-sink"), tmp_path / "sink", [])
        sink.port = sink_port
        sink.start()
        try:
            flush = subprocess.run([sys.executable, "-m", "scattergate", "queue", "flush", "--config", "sg.toml"],
                                   cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert flush.returncode == 0, flush.stderr
            assert "6 message(s) due now" in flush.stdout and "woke 2 running delivery" in flush.stdout
            assert wait_for(lambda: len(sink.messages()) == 6 and spool.ids() == [])
        finally:
            sink.stop()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert not list((data_dir / "spool" / "wake").iterdir())  # each worker removed its socket


def test_a_held_message_is_never_delivered_until_released(gateway, make_config, smtp_sink, capsys) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink()
    config = make_config(
        receive={"domains": ["example.org"]},
        delivery={"relay": sink.address, "verify_recipients": False, "relay_timeout": 5.0},
        spool={"enabled": True, "retry_initial": 3600.0, "retry_max": 3600.0},
    )
    spool = Spool(config.data_dir / "spool")  # left by the previous run: both due at once
    held, free = (SpoolEntry("a@sender.example", [SpooledRecipient(f"{name}@example.org")], time.time())
                  for name in ("held", "free"))
    for entry in (held, free):
        spool.put(entry, MESSAGE % entry.id.encode())
    assert queue(config.data_dir, "hold", held.id) == 0
    gw = gateway(config)
    assert wait_for(lambda: delivered_to(sink) == ["free@example.org"] and spool.ids() == [held.id])
    gw.call(gw.gateway.scheduler.run_once())  # one more scan on purpose: a held message is skipped
    assert delivered_to(sink) == ["free@example.org"]
    assert queue(config.data_dir, "release", held.id) == 0
    assert "woke 1" in capsys.readouterr().out
    assert wait_for(lambda: delivered_to(sink) == ["free@example.org", "held@example.org"] and spool.ids() == [])
