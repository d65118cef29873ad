"""`scattergate quarantine list|show|release|delete` against a real quarantine and smtp-sink."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scattergate.cli import main
from scattergate.delivery.quarantine import Quarantine
from scattergate.state.sqlite import SqliteStore
from scattergate.state.store import QuarantineItem

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


def test_unknown_id_and_missing_store_fail_clearly(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quarantine", "list", "--data-dir", str(data_dir)]) == 2
    assert "no state store" in capsys.readouterr().err
    hold(data_dir)
    assert main(["quarantine", "show", "000000000000", "--data-dir", str(data_dir)]) == 1
    assert main(["quarantine", "delete", "000000000000", "--data-dir", str(data_dir)]) == 1
    assert "no quarantined message" in capsys.readouterr().err


def test_delete_removes_index_row_and_file(data_dir: Path) -> None:
    item = hold(data_dir)
    assert Path(item.path).exists()
    assert main(["quarantine", "delete", item.id, "--data-dir", str(data_dir)]) == 0
    assert indexed(data_dir) == [] and not Path(item.path).exists()


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


def test_release_needs_a_downstream(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    item = hold(data_dir)
    assert main(["quarantine", "release", item.id, "--data-dir", str(data_dir)]) == 1
    assert "no downstream" in capsys.readouterr().err
    assert indexed(data_dir) == [item.id]
