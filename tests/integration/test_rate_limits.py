"""Rate limits through real gateways on loopback, counted in SQLite: two gateways on one host
(like the worker processes of `serve --workers`) share the counters through the database file.

Counts, not time: the window is an hour, so nothing expires while a test runs.
"""

from __future__ import annotations

import smtplib
import socket
from typing import Callable

from scattergate.config import Config
from tests.support.gateway import GatewayThread

OUTSIDE = ("127.0.0.2", 0)
HOUR = 3600.0


def send(address: tuple[str, int], source: tuple[str, int] = OUTSIDE,
         sender: str = "friend@remote.example") -> tuple[int, str]:
    """One message; the reply to RCPT if refused there, else the reply to DATA."""
    with smtplib.SMTP(*address, source_address=source) as client:
        client.ehlo("mx.remote.example")
        client.mail(sender)
        code, text = client.rcpt("postmaster@example.org")
        if code != 250:
            return code, text.decode()
        code, text = client.data(b"Subject: hi\r\n\r\nhi\r\n")
        return code, text.decode()


def test_two_gateways_on_one_sqlite_file_share_the_message_rate(
    make_config: Callable[..., Config], gateway: Callable[[Config], GatewayThread]
) -> None:
    config = make_config(receive={"domains": ["example.org"]},
                         rate_limits={"window": HOUR, "messages_per_client": 5})
    a, b = gateway(config), gateway(config)
    results = [send(a.address) for _ in range(3)] + [send(b.address) for _ in range(2)]
    assert [code for code, _ in results] == [250] * 5
    code, text = send(b.address)  # the 6th message from this client, whichever gateway
    assert code == 450 and text.startswith("4.7.1 Too much mail"), text
    code, text = send(a.address)
    assert code == 450
    # Another client has its own count; our own users (trusted) are exempt by default.
    assert send(a.address, ("127.0.0.3", 0))[0] == 250
    b.flush()
    decisions = b.store.recent_decisions(limit=20)
    refused = [d for d in decisions if d.verdict == "tempfail"]
    assert refused and all("ratelimit.messages" in " ".join(d.findings) for d in refused)
    assert refused[0].recipients == ("postmaster@example.org",)  # logged with the recipient


def test_connection_rate_refuses_with_421_and_closes(
    make_config: Callable[..., Config], gateway: Callable[[Config], GatewayThread]
) -> None:
    config = make_config(receive={"domains": ["example.org"]},
                         rate_limits={"window": HOUR, "connections_per_client": 3})
    gw = gateway(config)
    for _ in range(3):
        with smtplib.SMTP(*gw.address, source_address=OUTSIDE) as client:
            assert client.noop()[0] == 250
    with socket.create_connection(gw.address, timeout=10, source_address=OUTSIDE) as sock:
        reply = sock.makefile("rb").read()  # everything until the gateway closes
    assert reply.startswith(b"421 4.7.0 Too many connections from this client"), reply
    assert reply.endswith(b"\r\n") and reply.count(b"\r\n") == 1


def test_trusted_clients_have_their_own_limits(
    make_config: Callable[..., Config], gateway: Callable[[Config], GatewayThread]
) -> None:
    config = make_config(
        receive={"domains": ["example.org"], "trusted_networks": ["127.0.0.1/32"]},
        rate_limits={"window": HOUR, "messages_per_client": 1, "recipients_per_sender_domain": 100},
    )
    config.rate_limits.trusted.recipients_per_sender_domain = 2
    gw = gateway(config)
    ours = ("127.0.0.1", 0)
    assert [send(gw.address, ours, "alice@example.org")[0] for _ in range(3)] == [250, 250, 450]
    # Outside clients forging our domain count against the outside limit, not our users'.
    assert send(gw.address, OUTSIDE, "alice@example.org")[0] == 250
    assert send(gw.address, OUTSIDE, "alice@example.org")[0] == 450  # its message rate (1)
