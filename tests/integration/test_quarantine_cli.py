"""`scattergate quarantine list|show|release|delete` against a real quarantine and smtp-sink."""

from __future__ import annotations

import io
import json
import smtplib
from pathlib import Path

import pytest

from scattergate.cli import main
from scattergate.delivery.quarantine import Quarantine
from scattergate.state.sqlite import SqliteStore
from scattergate.state.store import DecisionRecord, QuarantineItem

MESSAGE = (
    b"From: victim@soft.example\r\nTo: nobody@example.org\r\nSubject: held for review\r\n"
    b"Message-ID: <held-1@soft.example>\r\n\r\nThe body stays out of --headers-only.\r\n"
)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def hold(data_dir: Path, sender: str = "victim@soft.example", rcpts: tuple[str, ...] = ("nobody@example.org",),
         reason: str = "bounce suppressed: sender-unverified") -> QuarantineItem:
    store = SqliteStore(data_dir / "state.sqlite3")
    try:
        return Quarantine(data_dir / "quarantine", store).hold(MESSAGE, sender, rcpts, reason)
    finally:
        store.close()


def indexed(data_dir: Path) -> list[str]:
    store = SqliteStore(data_dir / "state.sqlite3")
    try:
        return [i.id for i in store.quarantine_list()]
    finally:
        store.close()


def test_list_shows_held_messages_and_searches(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = hold(data_dir)
    second = hold(data_dir, sender="other@elsewhere.example", reason="backscatter.unsolicited")
    assert main(["quarantine", "list", "--data-dir", str(data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [second.id, first.id]  # newest first
    assert main(["quarantine", "list", "--data-dir", str(data_dir), "--search", "elsewhere", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == [second.id]
    assert rows[0]["recipients"] == ["nobody@example.org"] and rows[0]["reason"] == "backscatter.unsolicited"
    assert main(["quarantine", "list", "--data-dir", str(data_dir), "--limit", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_show_prints_the_message_or_its_headers(data_dir: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    item = hold(data_dir)
    assert main(["quarantine", "show", item.id, "--data-dir", str(data_dir)]) == 0
    assert capsysbinary.readouterr().out == MESSAGE
    assert main(["quarantine", "show", item.id, "--headers-only", "--data-dir", str(data_dir)]) == 0
    out = capsysbinary.readouterr().out
    assert b"Subject: held for review" in out and b"The body" not in out


def decisions(data_dir: Path) -> list[DecisionRecord]:
    store = SqliteStore(data_dir / "state.sqlite3")
    try:
        return store.recent_decisions()
    finally:
        store.close()


def test_unknown_id_and_missing_store_fail_clearly(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quarantine", "list", "--data-dir", str(data_dir)]) == 2
    assert "no state store" in capsys.readouterr().err
    hold(data_dir)
    assert main(["quarantine", "show", "000000000000", "--data-dir", str(data_dir)]) == 1
    assert main(["quarantine", "delete", "000000000000", "--data-dir", str(data_dir)]) == 1
    assert main(["quarantine", "release", "000000000000", "--data-dir", str(data_dir)]) == 1
    assert capsys.readouterr().err.count("no quarantined message") == 3


def test_delete_asks_first_then_removes_index_row_and_file(data_dir: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    item = hold(data_dir)
    assert Path(item.path).exists()
    for answer in ("n\n", ""):  # no, or no answer at all (end of input): kept
        monkeypatch.setattr("sys.stdin", io.StringIO(answer))
        assert main(["quarantine", "delete", item.id, "--data-dir", str(data_dir)]) == 1
        assert "not deleted" in capsys.readouterr().err
        assert indexed(data_dir) == [item.id]
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert main(["quarantine", "delete", item.id, "--data-dir", str(data_dir)]) == 0
    assert indexed(data_dir) == [] and not Path(item.path).exists()
    other = hold(data_dir)
    assert main(["quarantine", "delete", other.id, "--yes", "--data-dir", str(data_dir)]) == 0
    assert indexed(data_dir) == []
    assert [(d.phase, d.verdict, d.session) for d in decisions(data_dir)] == [
        ("quarantine", "delete", other.id), ("quarantine", "delete", item.id)]


def test_release_delivers_with_notify_never_and_unquarantines(data_dir: Path, smtp_sink, capsys) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink()
    item = hold(data_dir, rcpts=("nobody@example.org", "second@example.org"))
    keep = hold(data_dir)
    assert main(["quarantine", "release", item.id, "--to", sink.address, "--data-dir", str(data_dir)]) == 0
    assert "NOTIFY=NEVER" in capsys.readouterr().out
    (dump,) = sink.messages()
    assert b"X-Mail-Args: <victim@soft.example>" in dump  # the original sender, unchanged
    for rcpt in (b"nobody@example.org", b"second@example.org"):
        assert b"X-Rcpt-Args: <" + rcpt + b"> NOTIFY=NEVER" in dump
    assert MESSAGE.replace(b"\r\n", b"\n") in dump  # the sink stores LF line ends
    assert indexed(data_dir) == [keep.id] and not Path(item.path).exists()


def test_release_goes_to_delivery_relay_from_the_config(data_dir: Path, smtp_sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink()
    config = tmp_path / "scattergate.toml"
    config.write_text(f'[state]\ndata_dir = "{data_dir}"\n[delivery]\nrelay = "{sink.address}"\n')
    item = hold(data_dir)
    assert main(["quarantine", "release", item.id, "--config", str(config)]) == 0
    assert len(sink.messages()) == 1 and indexed(data_dir) == []


def test_release_without_dsn_downstream_uses_the_null_sender(data_dir: Path, smtp_sink, capsys) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink("-N")  # does not announce DSN: NOTIFY=NEVER cannot be said
    item = hold(data_dir)
    assert main(["quarantine", "release", item.id, "--to", sink.address, "--data-dir", str(data_dir)]) == 0
    assert "null sender" in capsys.readouterr().out
    (dump,) = sink.messages()
    assert b"X-Mail-Args: <>\n" in dump
    assert b"NOTIFY" not in dump


def test_refused_release_keeps_the_message(data_dir: Path, smtp_sink, capsys) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink("-r", "rcpt")  # every RCPT gets a 4xx
    item = hold(data_dir)
    assert main(["quarantine", "release", item.id, "--to", sink.address, "--data-dir", str(data_dir)]) == 1
    assert "refused" in capsys.readouterr().err
    assert sink.messages() == [] and indexed(data_dir) == [item.id] and Path(item.path).exists()


def test_release_without_a_downstream_delivers_to_the_local_maildir(data_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    item = hold(data_dir, rcpts=("nobody@example.org", "Second@Example.org"))
    assert main(["quarantine", "release", item.id, "--data-dir", str(data_dir)]) == 0
    assert "released" in capsys.readouterr().out
    for box in ("example.org/nobody", "example.org/second"):
        (delivered,) = (data_dir / "maildir" / box / "new").iterdir()
        assert delivered.read_bytes() == MESSAGE
    assert indexed(data_dir) == [] and not Path(item.path).exists()
    (record,) = decisions(data_dir)
    assert (record.phase, record.verdict, record.session, record.sender) == ("quarantine", "release", item.id,
                                                                             "victim@soft.example")
    assert record.findings[0].startswith("quarantine.released[") and "by=cli" in record.findings[0]


def test_release_failures_are_failures(data_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    item = hold(data_dir)
    (data_dir / "maildir").write_text("not a directory")  # the Maildir cannot be written
    assert main(["quarantine", "release", item.id, "--data-dir", str(data_dir)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "cannot deliver message" in captured.err
    assert indexed(data_dir) == [item.id] and decisions(data_dir) == []


@pytest.mark.parametrize("listen, to", [("127.0.0.1:2525", "127.0.0.1:2525"), ("0.0.0.0:25", "127.0.0.1:25"),
                                        ("127.0.0.1:2525", "localhost:2525")])
def test_release_into_the_gateway_itself_is_refused(data_dir: Path, tmp_path: Path, capsys, listen: str, to: str) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "scattergate.toml"
    config.write_text(f'[server]\nlisten = "{listen}"\n[state]\ndata_dir = "{data_dir}"\n')
    item = hold(data_dir)
    assert main(["quarantine", "release", item.id, "--to", to, "--config", str(config)]) == 1
    assert "this gateway's own listener" in capsys.readouterr().err
    assert indexed(data_dir) == [item.id]


def test_release_from_a_default_gateway_is_delivered_not_held_again(gateway, make_config, capsys) -> None:  # type: ignore[no-untyped-def]
    """The default set-up (no relay: local Maildir), a real gateway quarantining backscatter."""
    config = make_config(receive={"domains": ["example.org"]}, backscatter={"mode": "quarantine", "batv_mode": "off"})
    gw = gateway(config)
    bounce = (b"From: MAILER-DAEMON@remote.example\r\nTo: postmaster@example.org\r\nSubject: Undelivered Mail\r\n"
              b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
              b"--b\r\nContent-Type: text/plain\r\n\r\nNo such user.\r\n"
              b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.remote.example\r\n\r\n"
              b"Final-Recipient: rfc822; friend@remote.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
              b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: alice@example.org\r\n"
              b"Message-ID: <never-sent@example.org>\r\n\r\n--b--\r\n")
    with smtplib.SMTP(*gw.address, source_address=("127.0.0.2", 0)) as client:
        client.sendmail("", ["postmaster@example.org"], bounce)
    (item,) = gw.store.quarantine_list()
    assert main(["quarantine", "release", item.id, "--data-dir", str(config.data_dir)]) == 0
    (delivered,) = (config.data_dir / "maildir" / "example.org" / "postmaster" / "new").iterdir()
    assert b"Message-ID: <never-sent@example.org>" in delivered.read_bytes()
    assert gw.store.quarantine_list() == []  # delivered, not held again under a new id
    gw.flush()
    verdicts = [(d.phase, d.verdict) for d in gw.store.recent_decisions()]
    assert ("quarantine", "release") in verdicts and ("data", "quarantine") in verdicts
