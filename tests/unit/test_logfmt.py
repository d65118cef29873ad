import logging
import shlex

import pytest

from scattergate.logfmt import SessionLog, fields, quote


@pytest.mark.parametrize("value, expected", [
    ("mx.example.org", "mx.example.org"),
    ("<a@b.example>", "<a@b.example>"),
    ("", '""'),
    ("x.test client=192.0.2.66 verdict=accept", '"x.test client=192.0.2.66 verdict=accept"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("a\\b", '"a\\\\b"'),
    ("line\r\nnext", '"line\\r\\nnext"'),
    ("\x1b[31mred", '"\\x1b[31mred"'),
    ("csi\x9b2J", '"csi\\x9b2J"'),
    (b"bad\xffutf8".decode("utf-8", "surrogateescape"), '"bad\\xffutf8"'),
    ("caf\u00e9", '"caf\u00e9"'),
])
def test_quote_escapes_what_could_forge_a_field_or_reach_a_terminal(value, expected):
    assert quote(value) == expected


def test_a_quoted_value_splits_back_as_one_field():
    line = fields(helo="x.test client=192.0.2.66 verdict=accept", verdict="reject")
    assert shlex.split(line) == ["helo=x.test client=192.0.2.66 verdict=accept", "verdict=reject"]


def test_none_is_the_logs_absent_marker():
    assert fields(helo=None) == "helo=-"


def test_session_log_prefixes_every_line(caplog):
    logger = logging.getLogger("scattergate.test_logfmt")
    with caplog.at_level(logging.INFO, logger=logger.name):
        SessionLog(logger, "s1a2").warning("connection lost: %s", "reset")
    assert caplog.messages == ["session=s1a2 connection lost: reset"]


from hypothesis import given, strategies as st

from scattergate.logfmt import _escape_char, escape


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=()) | st.sampled_from(
    ["\\", '"', " ", "=", "\x1b", "\x7f", "\x9b", "\udcff", "\n"])))
def test_escape_fast_path_equals_the_per_character_rule(text: str) -> None:
    assert escape(text) == "".join(_escape_char(char) for char in text)
    assert quote(text) == (text if text and all(c not in ' "=\\' and c.isascii() and c.isprintable() for c in text)
                           else '"' + "".join(_escape_char(char) for char in text) + '"')
