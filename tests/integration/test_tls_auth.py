"""STARTTLS and SMTP AUTH on the gateway's listener, with real certificates (openssl CLI)
and real clients (smtplib, swaks)."""

from __future__ import annotations

import base64
import os
import re
import signal
import smtplib
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from scattergate.config import Config, ConfigError
from scattergate.credentials import hash_password
from tests.conftest import require_binary
from tests.support.dialogue import Dialogue
from tests.support.sink import free_port
from tests.support.tls import Pki, TlsSink, client_context, make_pki

USER, PASSWORD = "alice@example.org", "correct horse battery staple"
MESSAGE = b"From: alice@example.org\r\nTo: bob@foreign.example\r\nMessage-ID: <m1@example.org>\r\nSubject: out\r\n\r\nHi.\r\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(require_binary("openssl"), tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("users") / "users"
    path.write_text(f"# SMTP AUTH users\n{USER}:{hash_password(PASSWORD)}\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def downstream() -> Iterator[TlsSink]:
    sink = TlsSink(None).start()
    yield sink
    sink.stop()


@pytest.fixture
def tls_config(make_config, pki: Pki, users_file: Path, downstream: TlsSink) -> Callable[..., Config]:  # type: ignore[no-untyped-def]
    """A gateway for example.org relaying to `downstream`, with STARTTLS and AUTH offered."""

    def make(**tls: Any) -> Config:
        return make_config(
            receive={"domains": ["example.org"]},
            delivery={"relay": downstream.address, "verify_recipients": False},
            tls={"cert_file": str(pki.cert), "key_file": str(pki.key), **tls},
            smtp_auth={"users_file": str(users_file)},
        )

    return make


def connect(address: tuple[str, int], pki: Pki, *, starttls: bool = True) -> smtplib.SMTP:
    client = smtplib.SMTP(*address)
    client._host = pki.names[0]  # type: ignore[attr-defined]  # the name to verify (we dial an IP)
    client.ehlo("client.example")
    if starttls:
        client.starttls(context=client_context(pki.ca))
        client.ehlo("client.example")
    return client


def test_starttls_is_offered_and_verifies_with_the_ca(gateway, tls_config, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    gw = gateway(tls_config())
    with connect(gw.address, pki, starttls=False) as client:
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")  # never offered in clear text
        code, _ = client.starttls(context=client_context(pki.ca))
        assert code == 220
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]
        client.ehlo("client.example")
        assert not client.has_extn("starttls")
        assert client.has_extn("auth") and set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_below_1_2_is_refused_and_the_gateway_keeps_serving(gateway, tls_config, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    gw = gateway(tls_config())
    old = client_context(pki.ca)
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    with connect(gw.address, pki, starttls=False) as client:
        with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)) as refused:
            client.starttls(context=old)
        assert "NO_PROTOCOLS_AVAILABLE" not in str(refused.value)  # offered, and refused by the server
    with connect(gw.address, pki) as client:  # the next client is served normally
        assert client.noop()[0] == 250
        assert gw.gateway.active_sessions == 1  # the failed one is no longer counted


def test_required_tls_refuses_mail_before_starttls(gateway, tls_config, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    gw = gateway(tls_config(required=True))
    with Dialogue(gw.address) as dialogue:
        assert dialogue.command("EHLO client.example")[0] == 250
        assert dialogue.command("MAIL FROM:<someone@remote.example>") == (530, "5.7.0 Must issue a STARTTLS command first")
        assert dialogue.command("RCPT TO:<postmaster@example.org>")[0] == 530
    with connect(gw.address, pki) as client:
        assert client.mail("someone@remote.example")[0] == 250


def test_auth_is_refused_before_starttls(gateway, tls_config) -> None:  # type: ignore[no-untyped-def]
    gw = gateway(tls_config())
    plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    with Dialogue(gw.address) as dialogue:
        _, features = dialogue.command("EHLO client.example")
        assert "STARTTLS" in features and "AUTH" not in features
        assert dialogue.command(f"AUTH PLAIN {plain}")[0:1] == (538,)
        code, text = dialogue.command("AUTH LOGIN")
        assert (code, text.split()[0]) == (538, "5.7.11")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_with_the_right_password_succeeds(gateway, tls_config, pki: Pki, mechanism: str) -> None:  # type: ignore[no-untyped-def]
    gw = gateway(tls_config())
    with connect(gw.address, pki) as client:
        client.user, client.password = USER, PASSWORD
        code, text = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
        assert code == 235, text


def test_wrong_password_is_535_and_too_many_close_the_connection(gateway, tls_config, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    gw = gateway(tls_config())
    with connect(gw.address, pki) as client:
        client.user = USER
        for attempt, password in enumerate(["wrong", "", PASSWORD.upper()], start=1):
            client.password = password
            if attempt < 3:
                with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                    client.auth("PLAIN", client.auth_plain)
                assert refused.value.smtp_code == 535 and refused.value.smtp_error.startswith(b"5.7.8")
            else:
                # The third failure: 535, then 421 and the connection is closed.
                code, _ = client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{USER}\0x".encode()).decode())
                assert code == 535
                assert client.getreply()[0] == 421
                with pytest.raises(smtplib.SMTPServerDisconnected):
                    client.noop()
    with connect(gw.address, pki) as client:  # an unknown user is refused the same way
        client.user, client.password = "mallory@example.org", PASSWORD
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.auth("LOGIN", client.auth_login)
    gw.flush()
    counters = gw.store.counters()
    assert counters.get("auth.failed") == 4 and not counters.get("auth.success")


def test_a_client_that_keeps_failing_is_locked_out_across_connections(gateway, tls_config, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    config = tls_config()
    config.smtp_auth.failures_per_client = 2  # per client address, in the state store
    gw = gateway(config)
    with connect(gw.address, pki) as client:
        client.user, client.password = USER, "wrong"
        for _ in range(2):
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.auth("PLAIN", client.auth_plain)
    with connect(gw.address, pki) as client:  # a new connection: the right password is not even checked
        code, text = client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode())
        assert code == 454 and text.startswith(b"4.7.0")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    gw.flush()
    counters = gw.store.counters()
    assert counters.get("auth.failed") == 2 and counters.get("auth.locked_out") == 1 and not counters.get("auth.success")


def test_passwords_never_reach_the_log(gateway, tls_config, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    gw = gateway(tls_config())
    caplog.set_level("DEBUG")
    with connect(gw.address, pki) as client:
        client.user, client.password = USER, "a-wrong-password-123"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.auth("LOGIN", client.auth_login)
        client.password = PASSWORD
        client.auth("PLAIN", client.auth_plain)
    encoded = [base64.b64encode(p.encode()).decode() for p in ("a-wrong-password-123", PASSWORD)]
    for secret in ("a-wrong-password-123", PASSWORD, *encoded):
        assert secret not in caplog.text
    assert f"authenticated as {USER}" in caplog.text


def test_authenticated_client_relays_like_a_trusted_one(gateway, tls_config, pki: Pki, downstream: TlsSink) -> None:  # type: ignore[no-untyped-def]
    gw = gateway(tls_config())
    with connect(gw.address, pki) as client:  # TLS, but no AUTH: not ours to relay
        client.mail(USER)
        assert client.rcpt("bob@foreign.example")[0:1] == (554,)
        assert client.rcpt("bob@foreign.example")[1].startswith(b"5.7.1")
    with connect(gw.address, pki) as client:
        client.login(USER, PASSWORD)
        client.mail(USER)
        assert client.rcpt("bob@foreign.example")[0] == 250
        code, text = client.data(MESSAGE)
        assert code == 250, text
    (message,) = downstream.messages
    assert message["recipients"] == ["bob@foreign.example"]
    assert re.fullmatch(r"prvs=\d{4}[0-9a-f]{6}=alice@example\.org", message["sender"])  # BATV-signed
    assert b"with ESMTPSA id" in message["content"]  # RFC 3848: TLS and AUTH
    assert gw.call(gw.gateway.registry.sent("<m1@example.org>"))  # registered as our own mail


def test_swaks_starttls_and_auth(gateway, tls_config, pki: Pki, downstream: TlsSink) -> None:  # type: ignore[no-untyped-def]
    swaks = require_binary("swaks")
    gw = gateway(tls_config(required=True))
    base = [swaks, "--server", f"127.0.0.1:{gw.port}", "--ehlo", "client.example", "--tls",
            "--tls-verify", "--tls-ca-path", str(pki.ca), "--from", USER, "--to", "bob@foreign.example"]
    good = subprocess.run([*base, "--auth", "LOGIN", "--auth-user", USER, "--auth-password", PASSWORD],
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "<~  235 2.7.0" in good.stdout and len(downstream.messages) == 1
    bad = subprocess.run([*base, "--auth", "PLAIN", "--auth-user", USER, "--auth-password", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "<~* 535 5.7.8" in bad.stdout
    plain = subprocess.run([swaks, "--server", f"127.0.0.1:{gw.port}", "--from", USER, "--to", "bob@foreign.example"],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0 and "530 5.7.0 Must issue a STARTTLS command first" in plain.stdout
    assert len(downstream.messages) == 1


def test_auth_is_not_offered_without_a_users_file(gateway, make_config, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    gw = gateway(make_config(tls={"cert_file": str(pki.cert), "key_file": str(pki.key)}))
    with connect(gw.address, pki) as client:
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN AGFsaWNlAHg=")[0] == 502


# -- configuration errors: clear messages at start, never a crash -------------------------------


def test_unusable_certificates_and_users_files_are_config_errors(make_config, pki: Pki, users_file: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cert, key = str(pki.cert), str(pki.key)
    with pytest.raises(ConfigError, match="does not match"):
        make_config(tls={"cert_file": cert, "key_file": str(pki.other_key)})
    with pytest.raises(ConfigError, match="cannot read .*missing.pem"):
        make_config(tls={"cert_file": str(tmp_path / "missing.pem"), "key_file": key})
    with pytest.raises(ConfigError, match="tls.cert_file is required"):
        make_config(tls={"required": True})
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="tls: cannot use"):
        make_config(tls={"cert_file": str(garbage), "key_file": key})
    shared_key = tmp_path / "shared.key"
    shared_key.write_bytes(pki.key.read_bytes())
    shared_key.chmod(0o644)
    with pytest.raises(ConfigError, match="must not be accessible"):
        make_config(tls={"cert_file": cert, "key_file": str(shared_key)})
    with pytest.raises(ConfigError, match="tls.min_version"):
        make_config(tls={"cert_file": cert, "key_file": key, "min_version": "SSLv3"})
    with pytest.raises(ConfigError, match="needs tls.cert_file"):
        make_config(smtp_auth={"users_file": str(users_file)})
    open_users = tmp_path / "users"
    open_users.write_text(users_file.read_text())
    open_users.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644"):
        make_config(tls={"cert_file": cert, "key_file": key}, smtp_auth={"users_file": str(open_users)})
    open_users.chmod(0o600)
    open_users.write_text("bob:plaintext-password\n")
    with pytest.raises(ConfigError, match="entry 1 \\(bob\\) has no valid scrypt hash") as error:
        make_config(tls={"cert_file": cert, "key_file": key}, smtp_auth={"users_file": str(open_users)})
    assert "plaintext-password" not in str(error.value)


def test_serve_with_a_mismatched_key_exits_with_a_configuration_error(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "sg.toml").write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n[tls]\ncert_file = "{pki.cert}"\nkey_file = "{pki.other_key}"\n'
    )
    result = subprocess.run([sys.executable, "-m", "scattergate", "serve", "--config", "sg.toml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "configuration error: tls: cannot use" in result.stderr and "does not match" in result.stderr
    assert "Traceback" not in result.stderr


def test_passwd_prints_a_line_the_users_file_takes(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "scattergate", "passwd", "carol"], input="s3cret\n",
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("carol:scrypt$") and "s3cret" not in line
    users = tmp_path / "users"
    users.write_text(line + "\n")
    users.chmod(0o600)
    from scattergate.credentials import load_credentials

    credentials = load_credentials(users)
    assert credentials.verify("carol", b"s3cret") and not credentials.verify("carol", b"other")
    assert subprocess.run([sys.executable, "-m", "scattergate", "passwd", "a:b"], input="x\n",
                          capture_output=True, text=True).returncode == 2


def test_sighup_serves_new_connections_with_a_renewed_certificate(pki: Pki, tmp_path: Path) -> None:
    import queue
    import threading

    cert = tmp_path / "cert.pem"
    cert.write_bytes(pki.cert.read_bytes())
    port = free_port()
    (tmp_path / "sg.toml").write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n[http]\nlisten = ""\n'
        f'[tls]\ncert_file = "{cert}"\nkey_file = "{pki.key}"\n'
    )
    process = subprocess.Popen([sys.executable, "-m", "scattergate", "serve", "--config", "sg.toml"],
                               cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in process.stderr], daemon=True).start()  # type: ignore[union-attr]

    def wait_for_line(text: str) -> None:
        # Once per worker: by default one per core, and each reloads on its own.
        for _ in range(len(os.sched_getaffinity(0))):
            while text not in lines.get(timeout=30):
                pass

    def served_certificate() -> bytes:
        insecure = ssl.create_default_context()
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.starttls(context=insecure)
            return client.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]

    try:
        wait_for_line("listening on")
        first = served_certificate()
        cert.write_bytes(pki.self_signed_cert.read_bytes())  # "renewed": same key, new certificate
        process.send_signal(signal.SIGHUP)
        wait_for_line("reloaded the configuration")
        assert served_certificate() != first
        assert ssl.DER_cert_to_PEM_cert(served_certificate()).strip() == pki.self_signed_cert.read_text().strip()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


@pytest.mark.parametrize("users", [False, True], ids=["auth-off-502", "before-starttls-538"])
def test_credentials_sent_after_a_refused_auth_never_reach_the_log(  # type: ignore[no-untyped-def]
        gateway, make_config, tls_config, pki: Pki, caplog: pytest.LogCaptureFixture, users: bool) -> None:
    # Issue 15.1: a client that sends its base64 credentials although AUTH was refused (502: not
    # offered; 538: not before STARTTLS) gets them read as unknown commands; they must not be
    # logged, not even upper-cased (one of 64 candidates would give the password back).
    config = tls_config() if users else make_config(tls={"cert_file": str(pki.cert), "key_file": str(pki.key)})
    gw = gateway(config)
    caplog.set_level("DEBUG")
    plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    login = [base64.b64encode(USER.encode()).decode(), base64.b64encode(PASSWORD.encode()).decode()]
    with Dialogue(gw.address) as dialogue:
        dialogue.command("EHLO client.example")
        assert dialogue.command("AUTH PLAIN")[0] == (538 if users else 502)
        assert dialogue.command(plain)[0] == 500
        assert dialogue.command("AUTH LOGIN")[0] == (538 if users else 502)
        for line in login:
            assert dialogue.command(line)[0] == 500
        assert dialogue.command("NOOP")[0] == 250
    logged = caplog.text.upper()
    for secret in (plain, *login):
        for start in range(0, len(secret) - 8):
            assert secret[start:start + 8].upper() not in logged, secret
