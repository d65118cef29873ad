"""DKIM findings: messages signed in the test with throwaway keys, keys served by loopback DNS."""

from __future__ import annotations


import dkim
import pytest

from scattergate.checks.dkim import MAX_HEADER_BYTES, dkim_findings, verify_dkim
from scattergate.net.dns import Resolver
from tests.support.dns_server import DnsTestServer

# Throwaway RSA keys generated for these tests only (openssl genrsa), with their public halves
# (base64 DER SubjectPublicKeyInfo, as published in a DKIM key record).
KEY_A = b"""\
-----BEGIN RSA PRIVATE KEY-----
MIICXQIBAAKBgQC6qkX8wDcCQXl+SuLdURhtyUrU8U8KoNrQJ9rfmxasRo1l3xFW
FEnsJF+eVFcc0GgymTzAKZbYJVcPik7QZkVOMueIArhnhqVJpTCmzheUUsWfNSe3
RHN9YfD1nDGf67oZ/zRlTE/YXhHBZLt6FIOunmhUhr8OH/ns9AbkaCZ9VwIDAQAB
AoGBALgwpHbOxHj5WoUAJ/PyvYQ3iBuvMStvpfqYGSVjx2+e/o9zGYwy4O6exatZ
1cuc6fRjuMp1P19xGQNAmpyRDfh4WfjcVNHlnDXXsU9UdSR/+azVRyUoOl+cqRS0
F51QhICqLamkCs/xUeE6j0B3UH0uflhDnl8OUiqC4RPLf74hAkEA3SFjBrJGEvkt
ws2E4Ojowg7+pvSnVUzKHWpWDV1bFngc6ChNRiNS2n/TZuGqpnyGEXWI2/TEzhIn
AQE8MzbSgwJBANgZlrNJ1MU+lRFfSd7ZmiyhGsWjDTaNQy1vpEWjyxBAMdMrnxp4
5Hlpqu4Hr/S++1SkWvKjQlF5FdDF8YDhoZ0CQQCwoClTwPO91fBaSARaDU9VKdr3
ijVaKdLKuhPv6uCFyvzz5rUKT86vHijCZYAEKTSBH4tofVLxcohbAhyOn7x3AkAY
CNiK/kYs3eYEdZ2orHkKR6zLmHPqwlFbZ1RU7n+yQgGIpAxhDFsU6dy59p7qUKdx
ZYo7/E5u81Gq06kllXK9AkAdWPNdbgj7B1W7dXksu4SI7wyEIqzHPMHKSgcq74R5
3V+5Zm1WSH2yeWZrfkTsfbV8dLhLpXetA7PM+Lrkop+k
-----END RSA PRIVATE KEY-----
"""
KEY_A_PUB = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC6qkX8wDcCQXl+SuLdURhtyUrU8U8KoNrQJ9rfmxasRo1l3xFWFEnsJF+eVFcc0GgymTzAKZbYJVcPik7QZkVOMueIArhnhqVJpTCmzheUUsWfNSe3RHN9YfD1nDGf67oZ/zRlTE/YXhHBZLt6FIOunmhUhr8OH/ns9AbkaCZ9VwIDAQAB"
KEY_B = b"""\
-----BEGIN RSA PRIVATE KEY-----
MIICWwIBAAKBgQDNIv4xWoLtWBP8UTdF0ZBbf1x+xd14Z240q8nOzqCTC0S/Nrb9
t2YhuXqzOMUDLknCiaPnhIVimPDXwvLm1kQyYhTM2NgWcDh/3K/YSZdlUqmPAPaC
NKIh6WQQfZpPWig5uRP64pcoeGkxa2t/2nyK7Hn1cjJ3djtuC6hvoTKXdQIDAQAB
AoGAD1zLhI6ut2+dL4w1g3kKQo/rMWNIDrhQPImQ93fp9pklcNx8H8wYTfZCBiH+
Pxq8U2FTcQcvpg6mGsJyxm7NdIYHst0i8IMTuplRLPRINQf1CFmZ7+z3ePwijQFG
f+FMToEEPq1L6nC/3yxq2WszzBbF2M9tKltVjISTwFEbVQECQQD5/T0DzZXsKASc
B2xZDuc7JFIldC9UJigxQvBVpcAJzsBSqwbPTrZviu4ckkes6HjGyFD+yK7FFsMU
WccuhEDxAkEA0hGsX0ZLoAJqTFp7GB0vAlcczF4mSQs1aRRW1Bu5Qsc6h9uDHwpI
5een212cAlOjbz4UAZoYXbFMV3nMtNZ+xQJAHBUIf57ekpLEQcrLrw1viENCPxbY
IjnPFgmQ+e4OrotdK2wu7abH86vFp8v+5TuQJbRm9NgSWe1+qJCVQXJ14QJARgVY
FIXk7VgAwKSkRTxtD/WjhseXMV/IFNePvbHkBctMyj40LaOK+v9Fp0xDlU71uj3S
A1qu5oQTs1DJGDorFQJAI6a7moXJDitLS4+77yUbsnJgwfJSp7EDisPiMKZrN+By
zLi7HwDvLmvXnx3s9i53qqXleQI9nDi/g1rmMDRdfg==
-----END RSA PRIVATE KEY-----
"""
KEY_B_PUB = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDNIv4xWoLtWBP8UTdF0ZBbf1x+xd14Z240q8nOzqCTC0S/Nrb9t2YhuXqzOMUDLknCiaPnhIVimPDXwvLm1kQyYhTM2NgWcDh/3K/YSZdlUqmPAPaCNKIh6WQQfZpPWig5uRP64pcoeGkxa2t/2nyK7Hn1cjJ3djtuC6hvoTKXdQIDAQAB"
KEY_SMALL = b"""\
-----BEGIN RSA PRIVATE KEY-----
MIIBOgIBAAJBAMkxlEzuhGpEVlTicbBQrpnvdq0kJ85ae+hJQRiNpfdVk1eob99L
uoAbxC8H/PQ8ihPjKNtYK5p8bAFwBNhU4PsCAwEAAQJARW+A+RQQSwSOrvj/t5QA
zkugr5ycyFDeForBlpG8R6F6boQg9nCRbnc9ca6fT+A9wNP5Zt8xcVrI4HsoDk5o
QQIhAOa4KA4KLmDvp3PijXsTRN2bVeWN1743g3TgYs8KlUIRAiEA3z00vFnLYiHG
drnEuOc+MRC+Cu1smAc5DDCOtZ4MJksCIAOVdLnTGqlSz60TJdN1lypCEXGBZIqF
3jrgiWhh57OhAiEA3PhxxerANg+mqoixoDFNTzX6V0iykD2+C0HZUQ7ziccCIAu5
0AzGA0UuoVEx8pEFAklxMJWXsS41gQq0TWhEuUMx
-----END RSA PRIVATE KEY-----
"""
KEY_SMALL_PUB = "MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAMkxlEzuhGpEVlTicbBQrpnvdq0kJ85ae+hJQRiNpfdVk1eob99LuoAbxC8H/PQ8ihPjKNtYK5p8bAFwBNhU4PsCAwEAAQ=="

MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n"
           b"Subject: hello\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           b"Message-ID: <1@example.org>\r\n\r\nHello Bob.\r\n")


def key_record(pub: str) -> str:
    return f"v=DKIM1; k=rsa; p={pub}"


ZONE = {
    "sel._domainkey.example.org": [("TXT", key_record(KEY_A_PUB))],
    "other._domainkey.example.org": [("TXT", key_record(KEY_B_PUB))],  # not KEY_A's
    "small._domainkey.example.org": [("TXT", key_record(KEY_SMALL_PUB))],
    "revoked._domainkey.example.org": [("TXT", "v=DKIM1; k=rsa; p=")],
    "garbage._domainkey.example.org": [("TXT", "v=DKIM1; k=rsa; p=bm90IGEga2V5")],
    "weird._domainkey.example.org": [("TXT", "v=DKIM1; k=rot13; p=" + KEY_A_PUB)],
    "sel._domainkey.sub.example.org": [("TXT", key_record(KEY_A_PUB))],
    "sel._domainkey.servfail.example.org": [("TXT", key_record(KEY_A_PUB))],
    "sel._domainkey.slow.example.org": [("TXT", key_record(KEY_A_PUB))],
}


def sign(message: bytes, selector: str = "sel", domain: str = "example.org",
         key: bytes = KEY_A) -> bytes:
    sig = dkim.DKIM(message, minkey=512).sign(selector.encode(), domain.encode(), key)
    return sig + message


async def one(resolver: Resolver, message: bytes) -> tuple[str, str]:
    (res,) = await verify_dkim(resolver, message)
    f = res.finding()
    return f.result, f.detail


async def test_pass_with_domain_and_selector(resolver: Resolver) -> None:
    findings = await dkim_findings(resolver, sign(MESSAGE))
    assert [(f.key, f.detail) for f in findings] == [("dkim.pass", "d=example.org s=sel")]


async def test_lf_line_endings_verify_too(resolver: Resolver) -> None:
    assert (await one(resolver, sign(MESSAGE).replace(b"\r\n", b"\n")))[0] == "pass"


async def test_no_signature_is_none(resolver: Resolver) -> None:
    assert await one(resolver, MESSAGE) == ("none", "no signature")


async def test_tampering_fails(resolver: Resolver) -> None:
    signed = sign(MESSAGE)
    body = await one(resolver, signed.replace(b"Hello Bob.", b"Hello Eve."))
    assert body == ("fail", "d=example.org s=sel; body hash mismatch")
    header = await one(resolver, signed.replace(b"Subject: hello", b"Subject: hullo"))
    assert header == ("fail", "d=example.org s=sel; signature did not verify")


async def test_wrong_key_fails(resolver: Resolver) -> None:
    assert (await one(resolver, sign(MESSAGE, selector="other")))[0] == "fail"


@pytest.mark.parametrize(("selector", "reason"), [
    ("missing", "no key for signature"),
    ("revoked", "bad key"),
    ("garbage", "bad key"),
    ("weird", "bad key"),
    ("small", "public key too small"),
])
async def test_key_problems_are_permerror(resolver: Resolver, selector: str, reason: str) -> None:
    result, detail = await one(resolver, sign(MESSAGE, selector=selector,
                                              key=KEY_SMALL if selector == "small" else KEY_A))
    assert result == "permerror"
    assert detail.startswith(f"d=example.org s={selector}; ") and reason in detail


async def test_dns_failures_are_temperror(resolver: Resolver, server: DnsTestServer) -> None:
    server.servfail.add("sel._domainkey.servfail.example.org")
    server.drop.add("sel._domainkey.slow.example.org")
    for domain in ("servfail.example.org", "slow.example.org"):
        result, detail = await one(resolver, sign(MESSAGE, domain=domain))
        assert result == "temperror", detail
        assert "key lookup" in detail


@pytest.mark.parametrize("mangle", [
    lambda s: s.replace(b" d=example.org;", b""),  # required tag missing
    lambda s: s.replace(b"v=1;", b"v=9;"),  # unknown version
    lambda s: s.replace(b"a=rsa-sha256", b"a=rsa-md5"),  # unknown algorithm
    lambda s: s.replace(b"bh=", b"bh=!!!"),  # bad base64
    lambda s: s.replace(b"DKIM-Signature: ", b"DKIM-Signature: ===;;; ", 1),  # not tag=value
])
async def test_malformed_signatures_are_permerror(resolver: Resolver, mangle: object) -> None:
    signed = mangle(sign(MESSAGE))  # type: ignore[operator]
    result, _ = await one(resolver, signed)
    assert result == "permerror"


async def test_each_signature_gets_a_finding(resolver: Resolver) -> None:
    wrong_key = sign(MESSAGE, selector="other")[: -len(MESSAGE)]  # just the header field
    both = wrong_key + sign(MESSAGE)
    assert sorted(r.result for r in await verify_dkim(resolver, both)) == ["fail", "pass"]


async def test_absurd_sizes_are_permerror_not_exceptions(resolver: Resolver) -> None:
    signed = sign(MESSAGE)
    padded = signed.replace(b"To: ", b"X-Pad: " + b"a" * (MAX_HEADER_BYTES + 10) + b"\r\nTo: ")
    assert (await one(resolver, padded))[0] == "permerror"
    long_sig = signed.replace(b"DKIM-Signature: ", b"DKIM-Signature: z=" + b"x" * 20000 + b"; ", 1)
    assert (await one(resolver, long_sig))[0] == "permerror"
    many = b"".join(b"DKIM-Signature: v=1; d=example.org\r\n" for _ in range(50)) + MESSAGE
    results = await verify_dkim(resolver, many)
    assert len(results) == 8 and {r.result for r in results} == {"permerror"}
    for junk in (b"", b"\r\n\r\n", b"DKIM-Signature:\r\n\r\n", b"\x00\xff" * 100,
                 b"DKIM-Signature: v=1\r\n"):
        results = await verify_dkim(resolver, junk)
        assert results and all(r.result in ("none", "permerror") for r in results), junk
