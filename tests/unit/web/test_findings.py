"""Every finding the policy table knows has a sentence for the dashboard."""

from __future__ import annotations

from scattergate.decision.policy import DEFAULT_RULES
from scattergate.web.findings import BACKSCATTER_FINDINGS, EXPLAINED, explain, readable


def test_every_policy_key_is_explained_in_its_own_words() -> None:
    missing = [key for key in DEFAULT_RULES if not key.startswith("*") and key not in EXPLAINED]
    assert missing == []
    assert BACKSCATTER_FINDINGS <= EXPLAINED.keys()


def test_recorded_findings_are_split_into_key_score_and_detail() -> None:
    finding = readable("dnsbl.listed(+2)[client 192.0.2.1 listed by zen.example]")
    assert (finding.key, finding.score, finding.detail) == ("dnsbl.listed", "+2", "client 192.0.2.1 listed by zen.example")
    assert "blocklist" in finding.explanation
    assert readable("relay.denied").detail == ""


def test_unknown_keys_fall_back_to_their_check_and_result() -> None:
    assert explain("newcheck.timeout") == "The newcheck check ran out of its time budget; a timeout never accepts."
    assert explain("newcheck.odd") == "newcheck: odd."
