"""DKIM signing of our DSNs: OpenDKIM-style key table, private keys refused when others can
read them, and a signed DSN that dkimpy verifies against the key served by loopback DNS."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import dkim
import pytest

from scattergate.bounce.dsn import FailedMessage, RecipientStatus, build_dsn
from scattergate.config import ConfigError
from scattergate.rewrite.dkim_sign import DkimSigner, KeyTableError, load_key_table, load_signer
from tests.support.dkim_keys import dns_txt, key_record, make_key
from tests.support.dns_server import DnsTestServer

ORIGINAL = b"From: someone@pass.example\r\nTo: user@example.org\r\nSubject: hi\r\nMessage-ID: <m1@pass.example>\r\n\r\nHello.\r\n"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return make_key(tmp_path_factory.mktemp("keys"), "mail")


def table(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "KeyTable"
    path.write_text(text)
    return path


def dsn(reporting_mta: str = "mx.test.example") -> bytes:
    now = datetime.now(timezone.utc)
    failed = FailedMessage(sender="someone@pass.example", original=ORIGINAL,
                           recipients=[RecipientStatus("user@example.org", "5.1.1", diagnostic="550 5.1.1 unknown")],
                           reporting_mta=reporting_mta, arrival=now)
    return build_dsn(failed, now=now).data


def test_a_signed_dsn_verifies_against_the_key_in_dns(key: tuple[Path, str], tmp_path: Path) -> None:
    path, public = key
    signer = DkimSigner.from_key_table(table(tmp_path, f"# OpenDKIM KeyTable\nmail  test.example:sel1:{path}\n"))
    signed = signer.sign(dsn())
    assert signed.startswith(b"DKIM-Signature:") and b"d=test.example" in signed and b"s=sel1" in signed
    with DnsTestServer({"sel1._domainkey.test.example.": [("TXT", key_record(public))]}) as server:
        assert dkim.verify(signed, dnsfunc=dns_txt(server.port))
        # The signature covers what matters: a changed From fails it.
        forged = signed.replace(b"MAILER-DAEMON@mx.test.example", b"MAILER-DAEMON@mx.evil.example")
        assert not dkim.verify(forged, dnsfunc=dns_txt(server.port))


def test_the_nearest_domain_with_a_key_signs_and_others_go_unsigned(key: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = key
    signer = DkimSigner.from_key_table(table(tmp_path, f"a example.org:s:{path}\nb mx.example.org:t:{path}\n"))
    assert signer.key_for("mx.example.org").name == "b"  # type: ignore[union-attr]
    assert signer.key_for("deep.sub.example.org").name == "a"  # type: ignore[union-attr]
    assert signer.key_for("example.com") is None and signer.key_for("org") is None
    unsigned = dsn("mx.other.example")
    assert signer.sign(unsigned) == unsigned


def test_a_key_others_can_read_is_refused_naming_the_file(key: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = key
    loose = tmp_path / "loose.private"
    loose.write_bytes(path.read_bytes())
    loose.chmod(0o644)
    with pytest.raises(KeyTableError, match=f"{loose} has mode 0644.*chmod 600") as caught:
        load_key_table(table(tmp_path, f"mail test.example:sel1:{loose}\n"))
    assert isinstance(caught.value, ConfigError)  # `serve` reports it as a configuration error


@pytest.mark.parametrize("line, message", [
    ("mail test.example:sel1", "expected 'NAME DOMAIN:SELECTOR:KEYFILE'"),
    ("mail", "expected 'NAME DOMAIN:SELECTOR:KEYFILE'"),
    ("mail test.example:sel1:missing.private", "cannot open DKIM private key"),
])
def test_bad_key_tables_are_clear_errors(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(KeyTableError, match=message):
        load_key_table(table(tmp_path, line + "\n"))


def test_a_file_that_is_not_a_key_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.private"
    junk.write_text("not a key\n")
    junk.chmod(0o600)
    with pytest.raises(KeyTableError, match="not a PEM RSA private key"):
        load_key_table(table(tmp_path, "mail test.example:s:junk.private\n"))  # relative to the table


def test_no_table_no_signer_and_an_empty_table_is_an_error(tmp_path: Path) -> None:
    assert load_signer("") is None
    with pytest.raises(KeyTableError, match="no keys"):
        load_signer(str(table(tmp_path, "# nothing yet\n")))
