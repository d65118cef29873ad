"""Authentication-Results (RFC 8601) built from findings."""

from __future__ import annotations

import pytest

from scattergate.checks.authresults import build, header, is_ours, resinfo, split_detail
from scattergate.checks.dkim import DkimResult
from scattergate.checks.dmarc import DmarcPolicy, DmarcResult
from scattergate.checks.spf import SpfResult
from scattergate.model import Finding


def test_full_header_from_check_results() -> None:
    findings = [
        SpfResult("pass", "mailfrom", "example.org", "prvs=1234=a@example.org", "192.0.2.1",
                  mechanism="ip4:192.0.2.0/24").finding(),
        DkimResult("pass", "example.org", "sel").finding(),
        DkimResult("fail", "example.net", "s1", reason="body hash mismatch").finding(),
        DmarcResult("pass", "example.org", "example.org",
                    DmarcPolicy(p="reject", sp="none"), ("dkim",)).finding(),
        Finding("rbl", "listed", "ignored: not an auth method"),
    ]
    assert build("mx.example.com", findings) == (
        "mx.example.com;\r\n"
        "\tspf=pass smtp.mailfrom=prvs=1234=a@example.org;\r\n"
        "\tdkim=pass header.d=example.org header.s=sel;\r\n"
        '\tdkim=fail reason="body hash mismatch" header.d=example.net header.s=s1;\r\n'
        "\tdmarc=pass (p=reject sp=none) header.from=example.org")
    one_line = header("mx.example.com", findings[:1], linesep="")
    assert one_line == ("Authentication-Results: mx.example.com; "
                        "spf=pass smtp.mailfrom=prvs=1234=a@example.org")


def test_none_and_helo_and_errors() -> None:
    assert build("mx.example.com", []) == "mx.example.com; none"
    helo = SpfResult("temperror", "helo", "h.example.org", "postmaster@h.example.org",
                     "192.0.2.1", 'DNS "timeout"\\').finding()
    assert resinfo(helo) == 'spf=temperror reason="DNS \\"timeout\\"\\\\" smtp.helo=h.example.org'


def test_values_are_quoted_and_results_sanitised() -> None:
    f = Finding("spf", "pass", 'smtp.mailfrom="odd;local"@example.org')
    clause = resinfo(f)
    assert clause is not None and clause.startswith('spf=pass smtp.mailfrom="')
    assert resinfo(Finding("dkim", "Weird Result!", "")) == "dkim=permerror"
    assert resinfo(Finding("dkim", "none", "no signature")) == 'dkim=none reason="no signature"'
    assert resinfo(Finding("dkim", "fail", "d=x.example; caf\u00e9\r\n")) == \
        'dkim=fail reason="caf?" header.d=x.example'


def test_authserv_id_must_be_a_token() -> None:
    for bad in ("", "two words", "semi;colon"):
        with pytest.raises(ValueError):
            build(bad, [])


def test_split_detail_and_is_ours() -> None:
    assert split_detail("d=a.example s=x; reason here") == ({"d": "a.example", "s": "x"}, "reason here")
    assert split_detail("free text only") == ({}, "free text only")
    assert is_ours("MX.example.com; spf=pass", "mx.example.com")
    assert is_ours("(comment) mx.example.com 1; none", "mx.example.com")
    assert not is_ours("other.example; spf=pass smtp.mailfrom=mx.example.com", "mx.example.com")
