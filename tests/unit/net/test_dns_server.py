"""The test DNS server itself, driven from plain sync code with dnspython's query functions."""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.dns_server import DnsTestServer


def ask(srv: DnsTestServer, name: str, rtype: str, tcp: bool = False,
        timeout: float = 1.0) -> dns.message.Message:
    q = dns.message.make_query(name, rtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(q, srv.host, port=srv.port, timeout=timeout)


def test_serves_zone_over_udp_and_tcp_on_reported_port() -> None:
    with DnsTestServer({"a.test": [("A", "192.0.2.7"), ("TXT", ["one", "two"])]}) as srv:
        assert srv.port > 0
        for tcp in (False, True):
            r = ask(srv, "A.TEST", "A", tcp)
            assert r.flags & dns.flags.AA
            assert [x.address for x in r.answer[0]] == ["192.0.2.7"]
        assert ask(srv, "a.test", "TXT").answer[0][0].strings == (b"one", b"two")
        assert ask(srv, "b.test", "A").rcode() == dns.rcode.NXDOMAIN
        nodata = ask(srv, "a.test", "MX")
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority


def test_knobs_servfail_drop_truncate_and_zone_swap() -> None:
    srv = DnsTestServer({"a.test": [("A", "192.0.2.7")]})
    srv.start()
    try:
        srv.servfail.add(("a.test", "A"))
        assert ask(srv, "a.test", "A").rcode() == dns.rcode.SERVFAIL
        srv.servfail.clear()
        srv.truncate.add("a.test")
        assert ask(srv, "a.test", "A").flags & dns.flags.TC
        assert ask(srv, "a.test", "A", tcp=True).answer
        srv.drop.add("a.test")
        with pytest.raises(dns.exception.Timeout):
            ask(srv, "a.test", "A", timeout=0.2)
        srv.set_zone({"c.test": [("AAAA", "2001:db8::7")]})  # knobs reset with the zone
        assert ask(srv, "c.test", "AAAA").answer
        assert ask(srv, "a.test", "A").rcode() == dns.rcode.NXDOMAIN
        assert ("c.test", "AAAA", "udp") in srv.queries
    finally:
        srv.stop()


def test_delay_holds_the_answer_without_blocking_the_server() -> None:
    with DnsTestServer({"slow.test": [("A", "192.0.2.8")], "fast.test": [("A", "192.0.2.9")]}) as srv:
        srv.delay["slow.test"] = 5.0
        with pytest.raises(dns.exception.Timeout):
            ask(srv, "slow.test", "A", timeout=0.2)
        # The held answer doesn't stop the server answering others meanwhile.
        assert ask(srv, "fast.test", "A").answer


def test_cname_chain_and_loop() -> None:
    zone = {"x.test": [("CNAME", "y.test")], "y.test": [("A", "192.0.2.1")],
            "loop.test": [("CNAME", "loop.test")]}
    with DnsTestServer(zone) as srv:
        r = ask(srv, "x.test", "A")
        assert [rr.rdtype for rr in r.answer] == [5, 1]
        assert len(ask(srv, "loop.test", "A").answer) == 1  # stops at the loop
