"""What changes when Postfix, not scattergate, holds the SMTP dialogue (milter, policy service).

Postfix evaluates `smtpd_relay_restrictions` and its recipient tables (`local_recipient_maps`,
`relay_recipient_maps`, ...) before it asks a milter or a policy service about a RCPT. So here
(the RCPT checks for this are built by `assembly.assemble(..., behind_postfix=True)`; who is
one of ours is `PostfixTrust` below):
- relay control is Postfix's: our relay check is not run (it would refuse what `mynetworks`
  or `permit_sasl_authenticated` allowed);
- recipient validation is Postfix's: our recipient table runs only when one is configured;
- a recipient outside our domains that Postfix passed on proves the client may relay, i.e. is
  one of ours (mynetworks, SASL, or any `permit` of smtpd_relay_restrictions): the session is
  trusted (BATV-signed, no NOTIFY=NEVER, no backscatter check) without a copy of mynetworks;
- a recipient in the SRS domain is a bounce for mail we forwarded: ours, not a relay;
- the policy service cannot sign (it never sees the message), so in a policy-only install a
  bounce to an untagged address proves nothing: `batv.missing` is only observed there.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scattergate.address import Address
from scattergate.config import Config, ConfigError
from scattergate.model import Session

if TYPE_CHECKING:
    from scattergate.pipeline import Gateway

log = logging.getLogger(__name__)


def for_postfix(config: Config) -> Config:
    """Settings every Postfix-side service implies (explicit policy entries win).

    `[receive] domains` is required: a recipient outside them that Postfix passes on makes the
    client one of ours, so without them every client would be (signed, never refused as
    backscatter)."""
    if not config.receive.domains:
        raise ConfigError("receive.domains (--domain) must list every domain Postfix receives mail for")
    # Postfix routes outbound mail: a trusted client's mail to other domains has a route.
    config.policy.actions.setdefault("relay.no_route", "accept")
    return config


def for_policy_service(config: Config) -> Config:
    """The policy service never signs: an untagged bounce is not evidence of backscatter."""
    for_postfix(config)
    config.policy.actions.setdefault("batv.missing", "observe")
    return config


class PostfixTrust:
    """Who is one of our users, from what Postfix tells us (never from a copy of its tables)."""

    def __init__(self, gateway: "Gateway", config: Config) -> None:
        self._ours = frozenset(gateway.domains) | (
            {config.postfix.srs_domain.lower()} if config.postfix.srs_domain else frozenset())
        self._daemon_names = frozenset(config.postfix.trusted_daemon_names)

    def relayed_by_postfix(self, recipient: Address) -> bool:
        """Postfix passed on a recipient outside our domains: it let this client relay."""
        return recipient.domain.lower() not in self._ours

    def trusted_daemon(self, daemon_name: str) -> bool:
        return bool(daemon_name) and daemon_name in self._daemon_names

    def note_relay(self, session: Session, recipient: Address) -> None:
        if not session.trusted and self.relayed_by_postfix(recipient):
            session.trusted = True
            log.debug("session %s: Postfix relays for this client: trusted", session.id)
