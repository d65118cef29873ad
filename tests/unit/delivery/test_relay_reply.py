"""The before-queue relay's one reply for a partly refused message (delivery/relay.py)."""

from __future__ import annotations

from scattergate.delivery.relay import one_reply_for
from scattergate.model import Reply

UNKNOWN = Reply(550, "5.1.1", "no such user")
FULL = Reply(552, "5.2.2", "mailbox full")
BUSY = Reply(450, "4.2.1", "mailbox busy")


def test_all_refused_permanently_is_the_downstreams_first_refusal() -> None:
    assert one_reply_for(2, [UNKNOWN, FULL]) == UNKNOWN


def test_some_refused_permanently_is_a_tempfail_never_a_partial_accept() -> None:
    reply = one_reply_for(3, [UNKNOWN, FULL])
    assert (reply.code, reply.status) == (451, "4.5.3")


def test_a_temporary_refusal_is_passed_on() -> None:
    assert one_reply_for(2, [UNKNOWN, BUSY]) == BUSY
    assert one_reply_for(3, [BUSY]) == BUSY


def test_an_odd_refusal_code_still_gives_a_4xx() -> None:
    # A downstream that "refuses" with a code outside 4xx/5xx (e.g. 3xx) must not become ours.
    assert one_reply_for(2, [Reply(354, "", "odd")]).code == 451
