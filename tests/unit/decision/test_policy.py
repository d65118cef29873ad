import pytest

from scattergate.config import ConfigError, PolicyConfig
from scattergate.decision.policy import Decider, validate_policy
from scattergate.model import Accept, Finding, Quarantine, Reject, Reply, Tempfail


def test_no_findings_accepts_with_the_phase_reply() -> None:
    verdict = Decider().decide([], Reply(250, "2.1.5", "OK"))
    assert isinstance(verdict, Accept) and verdict.reply.status == "2.1.5"


def test_unknown_recipient_is_rejected_with_550_511() -> None:
    verdict = Decider().decide([Finding("recipient", "unknown", "x@example.org")])
    assert isinstance(verdict, Reject)
    assert (verdict.reply.code, verdict.reply.status) == (550, "5.1.1")


def test_reject_beats_tempfail_whatever_the_order() -> None:
    findings = [Finding("verify", "timeout", "slow"), Finding("relay", "denied", "other.example")]
    for ordered in (findings, findings[::-1]):
        verdict = Decider().decide(ordered)
        assert isinstance(verdict, Reject) and verdict.reply.code == 554


def test_timeout_of_any_check_tempfails() -> None:
    verdict = Decider().decide([Finding("anything", "timeout", "no answer within 2 s")])
    assert isinstance(verdict, Tempfail) and verdict.reply.code == 451
    assert "no answer within 2 s" in verdict.reply.text


def test_detail_is_rendered_on_one_line() -> None:
    verdict = Decider().decide([Finding("verify", "rejected", "550 5.1.1\r\n<x>: no such user")])
    assert isinstance(verdict, Reject)
    assert "\n" not in verdict.reply.text and "no such user" in verdict.reply.text


def test_every_finding_is_kept_on_the_verdict() -> None:
    findings = [Finding("relay", "outbound", "x"), Finding("recipient", "unknown", "y")]
    assert Decider().decide(findings).findings == tuple(findings)


def test_observe_mode_logs_but_does_not_decide() -> None:
    decider = Decider(PolicyConfig(actions={"recipient.unknown": "observe"}))
    assert isinstance(decider.decide([Finding("recipient", "unknown")]), Accept)


def test_config_can_change_action_and_reply() -> None:
    decider = Decider(
        PolicyConfig(actions={"relay.denied": "tempfail"}, replies={"relay.denied": "451 4.7.1 Not now"})
    )
    verdict = decider.decide([Finding("relay", "denied")])
    assert isinstance(verdict, Tempfail) and str(verdict.reply) == "451 4.7.1 Not now"
    verdict = Decider(PolicyConfig(actions={"relay.denied": "quarantine"})).decide([Finding("relay", "denied")])
    assert isinstance(verdict, Quarantine)


@pytest.mark.parametrize(
    "policy",
    [
        PolicyConfig(actions={"recipient.unknown": "bounce"}),
        PolicyConfig(replies={"recipient.unknown": "451 4.1.1 a reject with a 4xx"}),
        PolicyConfig(actions={"x.y": "tempfail"}, replies={"x.y": "550 5.0.0 a tempfail with a 5xx"}),
        PolicyConfig(replies={"recipient.unknown": "not a reply"}),
    ],
)
def test_invalid_policy_is_a_config_error(policy: PolicyConfig) -> None:
    with pytest.raises(ConfigError):
        validate_policy(policy)


def test_changing_an_action_keeps_replies_in_their_class() -> None:
    # spf.temperror defaults to observe with a 4xx reply; as a reject it must answer 5xx.
    verdict = Decider(PolicyConfig(actions={"spf.temperror": "reject"})).decide([Finding("spf", "temperror")])
    assert isinstance(verdict, Reject) and verdict.reply.code == 550
    verdict = Decider(PolicyConfig(actions={"spf.temperror": "tempfail"})).decide([Finding("spf", "temperror")])
    assert isinstance(verdict, Tempfail) and verdict.reply.code == 451


def test_spf_fail_is_refused_and_dns_trouble_only_observed_by_default() -> None:
    verdict = Decider().decide([Finding("spf", "fail", "smtp.mailfrom=a@forged.example")])
    assert isinstance(verdict, Reject) and (verdict.reply.code, verdict.reply.status) == (550, "5.7.23")
    for result in ("temperror", "permerror", "softfail", "none"):
        assert isinstance(Decider().decide([Finding("spf", result)]), Accept)


def test_strip_fields_removes_only_top_level_owned_fields() -> None:
    from scattergate.decision.headers import strip_fields

    message = (
        b"X-Spam-Flag: NO\r\nX-Spam-Status: No,\r\n score=-5\r\nSubject: hi\r\n"
        b"x-scattergate-backscatter: solicited\r\n\r\n"
        b"X-Spam-Flag: NO (a quoted original in the body stays)\r\n"
    )
    stripped = strip_fields(message, (b"x-spam-", b"x-scattergate-"))
    assert stripped == b"Subject: hi\r\n\r\nX-Spam-Flag: NO (a quoted original in the body stays)\r\n"
