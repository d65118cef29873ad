"""BATV behaviour beyond the Exim vectors: rotation, sub-address form, expiry window, wrap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scattergate.rewrite import batv
from scattergate.rewrite.batv import BatvStatus
from scattergate.rewrite.keys import BatvKeyring

DAY = 18262  # 2020-01-01
RING = BatvKeyring.from_mapping({"1": "secret", "2": "newer"}, current="2")


def test_known_exim_tag() -> None:
    ring = BatvKeyring.from_mapping({"1": "secret"}, current="1")
    assert batv.sign("user@example.org", ring, DAY) == "prvs=1269440928=user@example.org"


def test_sign_uses_current_key_and_old_keys_still_verify() -> None:
    old = BatvKeyring.from_mapping({"1": "secret"}, current="1")
    tag_old = batv.sign("u@example.org", old, DAY)
    tag_new = batv.sign("u@example.org", RING, DAY)
    assert tag_new.startswith("prvs=2")
    assert batv.verify(tag_old, RING, DAY).status is BatvStatus.VALID
    assert batv.verify(tag_new, RING, DAY).status is BatvStatus.VALID


def test_unknown_key_digit() -> None:
    ring3 = BatvKeyring.from_mapping({"3": "x"}, current="3")
    r = batv.verify(batv.sign("u@example.org", ring3, DAY), RING, DAY)
    assert r.status is BatvStatus.UNKNOWN_KEY
    assert r.address == "u@example.org" and r.key == "3"


def test_not_signed_returns_input() -> None:
    r = batv.verify("u@example.org", RING, DAY)
    assert r == batv.BatvResult(BatvStatus.NOT_SIGNED, "u@example.org")
    assert not r.valid


@pytest.mark.parametrize(
    ("offset", "status"),
    [(-3, BatvStatus.EXPIRED), (-2, BatvStatus.VALID), (0, BatvStatus.VALID), (7, BatvStatus.VALID), (8, BatvStatus.EXPIRED), (500, BatvStatus.EXPIRED)],
)
def test_expiry_window(offset: int, status: BatvStatus) -> None:
    tag = batv.sign("u@example.org", RING, DAY)
    assert batv.verify(tag, RING, DAY + offset).status is status


def test_expiry_across_the_1000_day_wrap() -> None:
    today = 18993  # (today + 7) % 1000 == 0
    tag = batv.sign("u@example.org", RING, today)
    assert batv.parse(tag).day == "000"  # type: ignore[union-attr]
    assert batv.verify(tag, RING, today + 7).valid
    assert batv.verify(tag, RING, today + 8).status is BatvStatus.EXPIRED


def test_bad_signature_beats_expiry() -> None:
    tag = batv.sign("u@example.org", RING, DAY).replace("=u@", "=v@")
    assert batv.verify(tag, RING, DAY + 30).status is BatvStatus.BAD_SIGNATURE


def test_uppercase_hash_fails_like_exim() -> None:
    ring = BatvKeyring.from_mapping({"1": "secret"}, current="1")
    tag = batv.sign("User.Name+tag@Example.ORG", ring, DAY)
    sig = tag[9:15]
    assert sig == "c9fbc5"
    upper = tag.replace(sig, sig.upper())
    assert sig != sig.upper()
    assert batv.verify(upper, ring, DAY).status is BatvStatus.BAD_SIGNATURE
    # The prefix itself is case-insensitive syntax.
    assert batv.verify("PRVS" + tag[4:], ring, DAY).valid


def test_suffix_form_round_trip_and_strip() -> None:
    tag = batv.sign("user@example.org", RING, DAY, form="suffix")
    assert tag.startswith("user+prvs=2") and tag.endswith("@example.org")
    assert batv.strip(tag) == "user@example.org"
    r = batv.verify(tag, RING, DAY)
    assert r.valid and r.address == "user@example.org"
    # Same signature as the prefix form: both sign the plain address.
    assert batv.parse(tag).signature == batv.parse(batv.sign("user@example.org", RING, DAY)).signature  # type: ignore[union-attr]


def test_signing_a_tagged_address_retags_the_original() -> None:
    once = batv.sign("u@example.org", RING, DAY)
    assert batv.sign(once, RING, DAY + 1) == batv.sign("u@example.org", RING, DAY + 1)


def test_quoted_local_part_with_at_sign() -> None:
    tag = batv.sign('"a@b"@example.org', RING, DAY)
    r = batv.verify(tag, RING, DAY)
    assert r.valid and r.address == '"a@b"@example.org'


@pytest.mark.parametrize("bad", ["nodomain", "@example.org", "user@"])
def test_sign_refuses_non_addresses(bad: str) -> None:
    with pytest.raises(ValueError):
        batv.sign(bad, RING, DAY)


def test_expiry_day_and_days_since_epoch() -> None:
    assert batv.expiry_day(DAY) == "269"
    assert batv.days_since_epoch(1577880000) == DAY


_local = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_characters='@"\\'), min_size=1, max_size=30)


@given(local=_local, today=st.integers(0, 40000), skew=st.integers(0, 7))
def test_sign_verify_round_trip(local: str, today: int, skew: int) -> None:
    addr = f"{local}@example.org"
    tag = batv.sign(addr, RING, today)
    r = batv.verify(tag, RING, today + skew)
    assert r.valid
    assert r.address == batv.strip(addr)
