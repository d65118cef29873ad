"""check-postfix's pure core: postconf -n text in, named risks out."""

from __future__ import annotations

from pathlib import Path

import pytest

from scattergate.cli.check_postfix import main
from scattergate.postfix_audit import audit, parse_master_overrides, parse_postconf

SAFE = """\
compatibility_level = 3.6
mydestination = $myhostname, localhost
relay_domains = example.org
relay_recipient_maps = inline:{ {user@example.org = ok}, {other@example.org = ok} }
smtpd_milters = inet:127.0.0.1:8895
smtpd_relay_restrictions = permit_mynetworks,
    reject_unauth_destination
"""


def _risky_settings(text: str) -> set[str]:
    return {risk.setting for risk in audit(parse_postconf(text), read=lambda path: None)}


def test_safe_configuration_has_no_risk() -> None:
    assert _risky_settings(SAFE) == set()


@pytest.mark.parametrize("line, setting", [
    ("smtpd_reject_unlisted_recipient = no", "smtpd_reject_unlisted_recipient"),
    ("unverified_recipient_defer_code = 250", "unverified_recipient_defer_code"),
    ("unverified_recipient_tempfail_action = dunno", "unverified_recipient_tempfail_action"),
    ("relay_recipient_maps =", "relay_recipient_maps"),
    ("relay_recipient_maps = inline:{ {@example.org = ok} }", "relay_recipient_maps"),
    ("local_recipient_maps =", "local_recipient_maps"),
    ("soft_bounce = yes", "soft_bounce"),
    ("milter_default_action = accept", "milter_default_action"),
    ("content_filter = smtp-amavis:[127.0.0.1]:10024", "content_filter"),
    ("smtpd_relay_restrictions = permit", "smtpd_relay_restrictions"),
])
def test_each_risk_is_named(line: str, setting: str) -> None:
    assert _risky_settings(SAFE + line + "\n") == {setting}


def test_wildcards_are_found_in_the_source_of_a_hash_map(tmp_path: Path) -> None:
    source = tmp_path / "relay_recipients"
    source.write_text("# valid\nuser@example.org OK\n@example.org OK\n")
    risks = audit(parse_postconf(SAFE + f"relay_recipient_maps = hash:{source}\n"))
    assert [r.setting for r in risks] == ["relay_recipient_maps"] and "@example.org" in risks[0].problem


def test_old_compatibility_level_relays_for_mydestination_only() -> None:
    # relay_domains defaults to $mydestination there: local recipient maps cover it.
    assert _risky_settings("compatibility_level = 0\nsmtpd_relay_restrictions = reject_unauth_destination\n") == set()


def test_exit_codes(tmp_path: Path) -> None:
    (tmp_path / "safe").write_text(SAFE)
    (tmp_path / "risky").write_text(SAFE + "soft_bounce = yes\n")
    (tmp_path / "junk").write_text("this is not postconf output\n")
    assert main(postconf_output=str(tmp_path / "safe")) == 0
    assert main(postconf_output=str(tmp_path / "risky")) == 1
    assert main(postconf_output=str(tmp_path / "junk")) == 2
    assert main(postconf_output=str(tmp_path / "missing")) == 2


def test_relay_domains_verified_by_probe_need_no_recipient_map() -> None:
    text = SAFE.replace("relay_recipient_maps = inline:{ {user@example.org = ok}, {other@example.org = ok} }\n", "")
    assert _risky_settings(text) == {"relay_recipient_maps"}
    verified = text + "smtpd_recipient_restrictions = reject_unverified_recipient\n"
    assert _risky_settings(verified) == set()


def test_content_filter_in_master_cf_is_named() -> None:
    services = parse_master_overrides("smtp/inet/content_filter = amavis:[127.0.0.1]:10024\n"
                                      "smtp/inet/smtpd_tls_security_level = may\n")
    risks = audit(parse_postconf(SAFE), read=lambda path: None, services=services)
    assert [(r.setting, r.value) for r in risks] == [("smtp/inet -o content_filter", "amavis:[127.0.0.1]:10024")]


def test_virtual_alias_catch_all_is_named(tmp_path: Path) -> None:
    assert _risky_settings(SAFE + "virtual_alias_maps = inline:{ {@example.org = someone@elsewhere.example} }\n") == {
        "virtual_alias_maps"}
    assert _risky_settings(SAFE + "virtual_alias_maps = inline:{ {info@example.org = someone@elsewhere.example} }\n") == set()
    regexp = tmp_path / "virtual.regexp"
    regexp.write_text("/^info@example\\.org$/ a@elsewhere.example\n/@example\\.org$/ catchall@elsewhere.example\n")
    risks = audit(parse_postconf(SAFE + f"virtual_alias_maps = regexp:{regexp}\n"))
    assert [r.setting for r in risks] == ["virtual_alias_maps"] and "@example" in risks[0].problem
