"""rspamd /checkv2 codec against replies captured from rspamd 3.4, and action mapping."""

from __future__ import annotations

import json

import pytest

from scattergate.checks.rspamd import RspamdScanner, decode_chunked, encode_request, parse_response
from scattergate.checks.scanners import ScanError
from scattergate.decision.policy import Decider
from scattergate.model import Accept, Quarantine, Reject, Tempfail

GTUBE_BODY = (b'{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject",'
              b'"symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0}},'
              b'"messages":{"smtp_message":"Gtube pattern"},"message-id":"1@b.example","time_real":0.05}')


def http(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nConnection: close\r\nServer: rspamd/3.4\r\n{extra}"
            f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n\r\n").encode() + body


def test_request_carries_the_envelope_as_headers() -> None:
    request = encode_request(
        42, host="127.0.0.1", ip="192.0.2.7", helo="mta.example", sender="a@sender.example",
        recipients=["b@example.org", "c@example.org"], queue_id="abc123", mta_name="mx.example",
    ).decode()
    head, _, rest = request.partition("\r\n\r\n")
    assert rest == ""
    lines = head.split("\r\n")
    assert lines[0] == "POST /checkv2 HTTP/1.1"
    for line in ("Content-Length: 42", "IP: 192.0.2.7", "Helo: mta.example", "From: a@sender.example",
                 "Rcpt: b@example.org", "Rcpt: c@example.org", "Queue-Id: abc123", "MTA-Name: mx.example",
                 "Connection: close"):
        assert line in lines


def test_null_sender_and_hostile_helo() -> None:
    request = encode_request(0, host="h", ip="192.0.2.7", helo="x\r\nRcpt: victim@example.org", sender="",
                             recipients=[], queue_id="q", mta_name="mx").decode()
    assert "From: <>\r\n" in request
    assert "\r\nRcpt:" not in request and "Helo: xRcpt: victim@example.org\r\n" in request


def test_gtube_reply_is_spam_with_rspamds_message() -> None:
    result = parse_response(http(GTUBE_BODY))
    assert (result.action, result.score, result.required, result.symbols) == ("reject", 15.0, 15.0, ("GTUBE",))
    finding = RspamdScanner.classify(result)
    assert (finding.check, finding.result, finding.score) == ("rspamd", "spam", 15.0)
    assert finding.detail == "action=reject required=15 tests=GTUBE; Gtube pattern"


def test_symbols_strongest_first() -> None:
    body = json.dumps({"action": "add header", "score": 7.5, "required_score": 15,
                       "symbols": {"A": {"score": 0.1}, "B": {"score": 5.0}, "C": {"score": -2.0}}}).encode()
    result = parse_response(http(body))
    assert result.symbols == ("B", "C", "A")
    assert RspamdScanner.classify(result).result == "tagged"


def test_chunked_reply() -> None:
    body = GTUBE_BODY
    chunked = f"{len(body[:50]):x}\r\n".encode() + body[:50] + f"\r\n{len(body[50:]):x}\r\n".encode() + body[50:] + b"\r\n0\r\n\r\n"
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    assert parse_response(raw).action == "reject"
    assert decode_chunked(b"0\r\n\r\n") == b""


@pytest.mark.parametrize(("action", "result", "verdict"), [
    ("reject", "spam", Reject), ("discard", "spam", Reject), ("add header", "tagged", Accept),
    ("rewrite subject", "tagged", Accept), ("soft reject", "deferred", Tempfail),
    ("quarantine", "quarantine", Quarantine), ("no action", "ham", Accept), ("greylist", "ham", Accept),
])
def test_actions_map_to_findings_and_verdicts(action: str, result: str, verdict: type) -> None:
    body = json.dumps({"action": action, "score": 3.0, "required_score": 15.0, "symbols": {}}).encode()
    finding = RspamdScanner.classify(parse_response(http(body)))
    assert finding.result == result
    decided = Decider().decide([finding])
    assert isinstance(decided, verdict)
    if verdict is Reject:
        assert (decided.reply.code, decided.reply.status) == (550, "5.7.1")
    if verdict is Tempfail:
        assert (decided.reply.code, decided.reply.status) == (451, "4.7.1")


@pytest.mark.parametrize(("raw", "message"), [
    (http(b'{"error":"bad request"}', "400 Bad Request"), "rspamd HTTP 400"),
    (http(b"<html>hello</html>"), "not JSON"),
    (http(b"[1, 2]"), "not a JSON object"),
    (http(b'{"action":"explode","score":1}'), "unknown action"),
    (http(b'{"action":"reject","score":"high"}'), "numeric score"),
    (http(b'{"error":"Cannot parse input"}'), "rspamd error: Cannot parse input"),
    (http(GTUBE_BODY)[:-10], "shorter than its Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5", "inside its headers"),
    (b"SPAMD/1.1 0 EX_OK\r\n\r\n", "unexpected rspamd reply"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunked"),
])
def test_errors_and_garbage_raise(raw: bytes, message: str) -> None:
    with pytest.raises(ScanError, match=message):
        parse_response(raw)
