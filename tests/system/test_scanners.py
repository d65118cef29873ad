"""Content scanning at end of DATA through the real gateway, with real clamd, spamd and rspamd.

Every refusal happens inside the dialogue; every failure of a scanner is a 451 within its
budget (or, when configured, an accept that says the scan was skipped) — never a 250 for a
message that is dropped or bounced later.
"""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from scattergate.config import ClamavConfig, Config, RspamdConfig, ScanConfig, SpamdConfig
from tests.support.dialogue import Dialogue
from tests.support.sink import free_port
from tests.system.conftest import EICAR, RSPAMD_TAG_MARK

pytestmark = pytest.mark.system

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
HEADERS = (
    b"From: Alice <alice@sender.example>\r\nTo: postmaster@localhost\r\n"
    b"Date: Fri, 27 Nov 2026 03:00:00 +0000\r\nMessage-ID: <m1@sender.example>\r\n"
)


def message(subject: str, body: bytes) -> bytes:
    return HEADERS + f"Subject: {subject}\r\n\r\n".encode() + body


CLEAN = message("lunch", b"Shall we have lunch on Friday? The usual place at noon.\r\n")
SPAM = message("test", GTUBE + b"\r\n")


def virus(padding: int = 0) -> bytes:
    """EICAR as a base64 attachment (clamd decodes MIME: the .hdb matches the 68-byte file),
    followed by `padding` bytes of a harmless second attachment."""
    parts = [
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BOUNDARY\r\n",
        b"Subject: invoice\r\n\r\n--BOUNDARY\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n",
        b"--BOUNDARY\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment;"
        b" filename=invoice.com\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(EICAR) + b"\r\n",
    ]
    if padding:
        parts.append(b"--BOUNDARY\r\nContent-Type: text/plain\r\n\r\n" + (b"padding line of text\r\n" * (padding // 22)))
    parts.append(b"--BOUNDARY--\r\n")
    return HEADERS + b"".join(parts)


def scan_config(make_config: Callable[..., Config], *, policy: dict[str, Any] | None = None,
                server: dict[str, Any] | None = None, **scanners: dict[str, Any]) -> Config:
    classes = {"clamav": ClamavConfig, "spamd": SpamdConfig, "rspamd": RspamdConfig}
    scan = ScanConfig(**{name: classes[name](enabled=True, **values) for name, values in scanners.items()})
    sections: dict[str, Any] = {"scan": {f: getattr(scan, f) for f in ("clamav", "spamd", "rspamd")}}
    if policy:
        sections["policy"] = policy
    if server:
        sections["server"] = server
    return make_config(**sections)


def send(gw: Any, data: bytes) -> tuple[int, str, float]:
    """One message to postmaster@localhost; the end-of-DATA reply and how long it took."""
    with Dialogue(gw.address) as d:
        d.command("EHLO client.example")
        assert d.command("MAIL FROM:<alice@sender.example>")[0] == 250
        assert d.command("RCPT TO:<postmaster@localhost>")[0] == 250
        assert d.command("DATA")[0] == 354
        started = time.monotonic()
        d.send(data + b".\r\n")
        code, text = d.reply()
        return code, text, time.monotonic() - started


def delivered(config: Config) -> list[bytes]:
    return [p.read_bytes() for p in sorted((config.maildir / "localhost" / "postmaster" / "new").glob("*"))]


def quarantined(gw: Any) -> list[tuple[str, bytes]]:
    """(reason, content) of every held message, from the quarantine index."""
    return [(item.reason, Path(item.path).read_bytes()) for item in gw.store.quarantine_list()]


def decision_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "scattergate.decision" and "phase=data" in r.getMessage()]


# -- real scanners ----------------------------------------------------------------------------

def test_virus_is_refused_at_end_of_data_with_its_name(gateway, make_config, clamd, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="scattergate.decision")
    config = scan_config(make_config, clamav={"address": clamd.address, "budget": 10.0})
    gw = gateway(config)
    code, text, _ = send(gw, virus())
    assert (code, text.split()[0]) == (554, "5.7.1"), text
    assert "Test.EICAR.HDB" in text
    assert delivered(config) == []
    (line,) = decision_lines(caplog)
    assert "verdict=reject" in line and "clamav.virus[Test.EICAR.HDB" in line
    gw.flush()
    assert gw.store.counters()["findings.clamav.virus"] == 1


def test_virus_beyond_the_size_cap_is_still_found_in_the_scanned_prefix(gateway, make_config, clamd) -> None:  # type: ignore[no-untyped-def]
    data = virus(padding=200_000)
    config = scan_config(make_config, clamav={"address": clamd.address, "max_size": 100_000})
    code, text, _ = send(gateway(config), data)
    assert code == 554 and "Test.EICAR.HDB" in text


def test_clean_mail_passes_all_three_scanners_and_says_so(gateway, make_config, clamd, spamd, rspamd, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="scattergate.decision")
    config = scan_config(make_config, clamav={"address": clamd.unix_socket}, spamd={"address": spamd.address},
                         rspamd={"address": rspamd.address})
    code, text, _ = send(gateway(config), CLEAN)
    assert code == 250, text
    (mail,) = delivered(config)
    head = mail.split(b"\r\n\r\n", 1)[0].decode()
    assert "X-Virus-Scanned: ClamAV on mx.test.example" in head
    assert "X-Spam-Status: No, score=" in head and "scanner=spamd" in head and "scanner=rspamd" in head
    assert "X-Spam-Flag" not in head
    (line,) = decision_lines(caplog)
    assert "verdict=accept" in line
    for finding in ("clamav.clean", "spamd.ham", "rspamd.ham"):
        assert finding in line


def test_gtube_is_refused_by_spamd(gateway, make_config, spamd, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="scattergate.decision")
    config = scan_config(make_config, spamd={"address": spamd.address})
    code, text, _ = send(gateway(config), SPAM)
    assert (code, text.split()[0]) == (550, "5.7.1"), text
    assert delivered(config) == []
    (line,) = decision_lines(caplog)
    assert "spamd.spam(+" in line and "GTUBE" in line  # GTUBE scores ~1000


def test_gtube_is_refused_by_rspamd(gateway, make_config, rspamd, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="scattergate.decision")
    config = scan_config(make_config, rspamd={"address": rspamd.address})
    code, text, _ = send(gateway(config), SPAM)
    assert (code, text.split()[0]) == (550, "5.7.1"), text
    assert delivered(config) == []
    (line,) = decision_lines(caplog)
    assert "rspamd.spam" in line and "action=reject" in line


def test_tag_level_spam_from_spamd_is_delivered_with_x_spam_headers(gateway, make_config, spamd) -> None:  # type: ignore[no-untyped-def]
    # GTUBE scores 1000: with the reject threshold above it, it lands in the tag band.
    config = scan_config(make_config, spamd={"address": spamd.address, "tag_score": 5.0, "reject_score": 5000.0})
    code, text, _ = send(gateway(config), SPAM)
    assert code == 250, text
    (mail,) = delivered(config)
    head = mail.split(b"\r\n\r\n", 1)[0].decode()
    assert "X-Spam-Flag: YES" in head
    assert "X-Spam-Status: Yes, score=" in head and " required=5 tests=" in head and "GTUBE" in head


def test_tag_level_spam_from_rspamd_is_delivered_with_x_spam_headers(gateway, make_config, rspamd) -> None:  # type: ignore[no-untyped-def]
    config = scan_config(make_config, rspamd={"address": rspamd.address})
    code, text, _ = send(gateway(config), message(f"offer {RSPAMD_TAG_MARK}", b"Cheap things.\r\n"))
    assert code == 250, text
    (mail,) = delivered(config)
    head = mail.split(b"\r\n\r\n", 1)[0].decode()
    assert "X-Spam-Flag: YES" in head and "SCATTERGATE_TEST_TAG" in head and "scanner=rspamd" in head


def test_tag_level_spam_is_quarantined_when_the_policy_says_so(gateway, make_config, spamd) -> None:  # type: ignore[no-untyped-def]
    config = scan_config(make_config, spamd={"address": spamd.address, "reject_score": 5000.0},
                         policy={"actions": {"spamd.tagged": "quarantine"}})
    gw = gateway(config)
    code, text, _ = send(gw, SPAM)
    assert code == 250 and "held" in text, text
    assert delivered(config) == []
    ((reason, held),) = quarantined(gw)
    assert "spamd.tagged" in reason and b"X-Spam-Flag: YES" in held


# -- scanners that fail -------------------------------------------------------------------------

BUDGET = 1.0
SCANNER_NAMES = ("clamav", "spamd", "rspamd")


@pytest.mark.parametrize("mode", ["stopped", "hung", "garbage"])
@pytest.mark.parametrize("scanner", SCANNER_NAMES)
def test_a_failing_scanner_tempfails_within_its_budget(gateway, make_config, fake_scanner, scanner, mode, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="scattergate.decision")
    address = f"127.0.0.1:{free_port()}" if mode == "stopped" else fake_scanner("hang" if mode == "hung" else "garbage").address
    config = scan_config(make_config, **{scanner: {"address": address, "budget": BUDGET}})
    code, text, elapsed = send(gateway(config), CLEAN)
    assert (code, text.split()[0]) == (451, "4.7.1"), text
    # A hung scanner costs its budget and no more; the others fail at once.
    assert elapsed < BUDGET + 1.0
    if mode != "hung":
        assert elapsed < BUDGET / 2
    assert delivered(config) == []
    (line,) = decision_lines(caplog)
    assert f"{scanner}.failed" in line and "verdict=tempfail" in line


def test_stopped_clamd_on_a_unix_socket_tempfails(gateway, make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = scan_config(make_config, clamav={"address": f"unix:{tmp_path / 'no-clamd.sock'}"})
    code, text, _ = send(gateway(config), CLEAN)
    assert (code, text.split()[0]) == (451, "4.7.1") and "not running" in text


def test_hung_scanners_run_concurrently_within_one_budget(gateway, make_config, fake_scanner) -> None:  # type: ignore[no-untyped-def]
    hung = {name: {"address": fake_scanner("hang").address, "budget": BUDGET} for name in SCANNER_NAMES}
    code, _, elapsed = send(gateway(scan_config(make_config, **hung)), CLEAN)
    assert code == 451
    assert elapsed < 2 * BUDGET  # one after the other would take three budgets


def test_on_failure_accept_delivers_with_a_scan_skipped_header(gateway, make_config, fake_scanner) -> None:  # type: ignore[no-untyped-def]
    config = scan_config(make_config, clamav={"address": fake_scanner("hang").address, "budget": BUDGET,
                                              "on_failure": "accept"})
    code, text, elapsed = send(gateway(config), CLEAN)
    assert code == 250, text
    assert elapsed < BUDGET + 1.0
    (mail,) = delivered(config)
    assert b"X-Scan-Skipped: clamav (no answer within 1 s)" in mail


def test_message_above_the_spam_scan_cap_is_not_sent_and_says_so(gateway, make_config) -> None:  # type: ignore[no-untyped-def]
    # Nothing listens at this address: a 250 proves the scanner was never asked.
    config = scan_config(make_config, spamd={"address": f"127.0.0.1:{free_port()}", "max_size": 100})
    code, text, _ = send(gateway(config), CLEAN)
    assert code == 250, text
    (mail,) = delivered(config)
    assert b"X-Scan-Skipped: spamd (" in mail and b"above max_size 100" in mail
