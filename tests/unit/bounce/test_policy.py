"""The safe-bounce rule and the DSN rate limiter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scattergate.bounce.policy import BounceDecision, may_bounce
from scattergate.bounce.dsn_rate import DsnRateLimiter, Rate

VERIFIED = dict(content_verdict="clean", spf_result="pass", dkim_aligned_pass=False, notify=None)


def test_verified_clean_sender_may_bounce() -> None:
    assert may_bounce("alice@example.org", **VERIFIED) == BounceDecision(True, "ok")
    assert may_bounce("<alice@example.org>", **VERIFIED).allowed


def test_dkim_aligned_pass_alone_verifies() -> None:
    d = may_bounce("a@example.org", content_verdict="clean", spf_result="softfail", dkim_aligned_pass=True, notify=None)
    assert d.allowed


@pytest.mark.parametrize("sender", ["", "<>", "  ", " <> "])
def test_null_sender_never(sender: str) -> None:
    assert may_bounce(sender, **VERIFIED) == BounceDecision(False, "null-sender")


@pytest.mark.parametrize(
    ("notify", "reason"),
    [
        (frozenset({"NEVER"}), "notify-never"),
        (frozenset({"never"}), "notify-never"),
        (frozenset({"SUCCESS", "DELAY"}), "notify-no-failure"),
        (frozenset({"SUCCESS"}), "notify-no-failure"),
    ],
)
def test_notify_forbids(notify: frozenset[str], reason: str) -> None:
    d = may_bounce("a@example.org", **{**VERIFIED, "notify": notify})
    assert d == BounceDecision(False, reason)


def test_notify_failure_allows_and_delay_kind_needs_delay() -> None:
    assert may_bounce("a@example.org", **{**VERIFIED, "notify": frozenset({"FAILURE"})}).allowed
    d = may_bounce("a@example.org", **{**VERIFIED, "notify": frozenset({"FAILURE"})}, kind="delay")
    assert d == BounceDecision(False, "notify-no-delay")
    assert may_bounce("a@example.org", **VERIFIED, kind="delay").allowed  # no NOTIFY: default


@pytest.mark.parametrize(
    ("verdict", "reason"),
    [("spam", "spam"), ("virus", "virus"), ("SPAM", "spam"), ("phish", "content-phish"), ("", "content-unknown")],
)
def test_hostile_or_unknown_content_never(verdict: str, reason: str) -> None:
    d = may_bounce("a@example.org", **{**VERIFIED, "content_verdict": verdict, "dkim_aligned_pass": True})
    assert d == BounceDecision(False, reason)


@pytest.mark.parametrize("spf", [None, "none", "neutral", "softfail", "fail", "temperror", "permerror", "PASSX"])
def test_unverified_sender_never(spf: str | None) -> None:
    d = may_bounce("a@example.org", content_verdict="clean", spf_result=spf, dkim_aligned_pass=False, notify=None)
    assert not d.allowed
    assert d.reason == f"sender-unverified (spf={(spf or 'none').lower()}, dkim=none)"


def test_reason_format_matches_log_contract() -> None:
    d = may_bounce("a@example.org", content_verdict="clean", spf_result="softfail", dkim_aligned_pass=False, notify=None)
    assert d.reason == "sender-unverified (spf=softfail, dkim=none)"


def test_sender_without_domain_never() -> None:
    assert may_bounce("postmaster", **VERIFIED) == BounceDecision(False, "sender-no-domain")


# Exhaustive property: no combination with a null or unverified sender (or hostile content, or a
# forbidding NOTIFY) is ever allowed, and every other combination is.
_senders = st.one_of(
    st.sampled_from(["", "<>", " ", "<> ", "a@example.org", "<b@example.net>", "nodomain", "@x", "x@"]),
    st.text(max_size=30),
)
_spf = st.one_of(st.none(), st.sampled_from(["pass", "PASS", "fail", "softfail", "neutral", "none", "temperror", "permerror"]), st.text(max_size=10))
_verdicts = st.one_of(st.sampled_from(["clean", "spam", "virus", "CLEAN", "unknown"]), st.text(max_size=10))
_notify = st.one_of(st.none(), st.frozensets(st.sampled_from(["NEVER", "SUCCESS", "FAILURE", "DELAY", "failure"])))


@given(sender=_senders, verdict=_verdicts, spf=_spf, dkim=st.booleans(), notify=_notify)
def test_may_bounce_is_safe(sender: str, verdict: str, spf: str | None, dkim: bool, notify: frozenset[str] | None) -> None:
    d = may_bounce(sender, content_verdict=verdict, spf_result=spf, dkim_aligned_pass=dkim, notify=notify)
    null = sender.strip() in ("", "<>")
    verified = (spf or "").strip().lower() == "pass" or dkim
    words = None if notify is None else {w.upper() for w in notify}
    notify_ok = words is None or ("NEVER" not in words and "FAILURE" in words)
    bare = sender.strip().removeprefix("<").removesuffix(">") if sender.strip().startswith("<") and sender.strip().endswith(">") else sender.strip()
    has_domain = "@" in bare and bool(bare.rpartition("@")[0]) and bool(bare.rpartition("@")[2])
    expected = (not null) and verified and notify_ok and verdict.strip().lower() == "clean" and has_domain
    assert d.allowed is expected
    if null:
        assert d.reason == "null-sender"
    if d.allowed:
        assert d.reason == "ok"
    else:
        assert d.reason and d.reason != "ok"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_per_address_bucket_refills() -> None:
    clock = FakeClock()
    rl = DsnRateLimiter(per_address=Rate(burst=2, per_second=1 / 60), per_domain=Rate(100, 1), clock=clock)
    assert rl.allow("a@example.org").allowed
    assert rl.allow("<A@Example.org>").allowed  # same address, case-folded
    assert rl.allow("a@example.org") == BounceDecision(False, "rate-limited (address)")
    assert rl.allow("b@example.org").allowed  # other address unaffected
    clock.now += 59
    assert not rl.allow("a@example.org").allowed
    clock.now += 1
    assert rl.allow("a@example.org").allowed


def test_rate_limiter_per_domain_and_refusal_consumes_nothing() -> None:
    clock = FakeClock()
    rl = DsnRateLimiter(per_address=Rate(5, 0), per_domain=Rate(burst=3, per_second=0), clock=clock)
    assert all(rl.allow(f"u{i}@example.org").allowed for i in range(3))
    assert rl.allow("u9@example.org") == BounceDecision(False, "rate-limited (domain)")
    assert rl.allow("u0@example.net").allowed
    # A refusal by the domain bucket must not spend the address token: y's single token is
    # still there when y later writes to another domain.
    rl2 = DsnRateLimiter(per_address=Rate(1, 0), per_domain=Rate(1, 0), clock=clock)
    assert rl2.allow("x@a.example").allowed
    assert not rl2.allow("y@a.example").allowed
    assert rl2.allow("y@b.example").allowed


def test_rate_limiter_clock_backwards_mints_nothing() -> None:
    clock = FakeClock()
    rl = DsnRateLimiter(per_address=Rate(1, 1), per_domain=Rate(10, 1), clock=clock)
    assert rl.allow("a@x.example").allowed
    clock.now -= 3600
    assert not rl.allow("a@x.example").allowed


def test_rate_limiter_memory_is_bounded() -> None:
    clock = FakeClock()
    rl = DsnRateLimiter(per_address=Rate(1, 0), per_domain=Rate(10**6, 0), clock=clock, max_keys=50)
    for i in range(500):
        rl.allow(f"u{i}@example.org")
    assert len(rl._address) <= 50


def test_rate_per_hour() -> None:
    r = Rate.per_hour(60)
    assert r.burst == 60 and r.per_second == pytest.approx(1 / 60)
    with pytest.raises(ValueError):
        Rate(0, 1)
