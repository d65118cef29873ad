"""The safe text view of a held message: text shown, HTML as source, nothing ever fails."""

from __future__ import annotations

from scattergate.web.message_view import MAX_TEXT, text_view


def test_plain_text_is_decoded_and_attachments_listed() -> None:
    content = (
        b"From: a@b.example\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Gr=FC=DFe\r\n"
        b"--b\r\nContent-Type: application/pdf; name=r.pdf\r\nContent-Disposition: attachment; filename=r.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n"
    )
    view = text_view(content)
    assert "Grüße" in view.text
    assert [(p.content_type, p.filename, p.shown) for p in view.parts] == [
        ("text/plain", "", True), ("application/pdf", "r.pdf", False)]
    assert view.parts[1].size == 5


def test_html_only_is_shown_as_its_source_and_plain_wins_when_both() -> None:
    html_only = b"Content-Type: text/html\r\n\r\n<img src=http://tracker.example/x.gif><b>hi</b>\r\n"
    assert "<img src=http://tracker.example/x.gif>" in text_view(html_only).text
    both = (b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n'
            b"plain words\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>html words</p>\r\n--b--\r\n")
    view = text_view(both)
    assert "plain words" in view.text and "html words" not in view.text


def test_broken_charset_and_encoding_do_not_fail_and_size_is_bounded() -> None:
    content = (b"Content-Type: text/plain; charset=no-such-charset\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               b"!!!not base64\xff\r\n")
    assert text_view(content).parts[0].shown
    huge = b"Content-Type: text/plain\r\n\r\n" + b"x" * (MAX_TEXT + 10)
    view = text_view(huge)
    assert view.truncated and len(view.text) == MAX_TEXT


def test_a_bounce_shows_its_delivery_status_per_recipient() -> None:
    content = (b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
               b"--b\r\nContent-Type: text/plain\r\n\r\nCould not deliver.\r\n"
               b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n"
               b"Final-Recipient: rfc822; x@remote.example\r\nAction: failed\r\nStatus: 5.1.1\r\n--b--\r\n")
    view = text_view(content)
    assert [p.content_type for p in view.parts] == ["text/plain", "message/delivery-status"]
    assert "Final-Recipient: rfc822; x@remote.example" in view.text and "Status: 5.1.1" in view.text
