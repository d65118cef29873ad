"""The dashboard in a real browser: Debian's chromium driven by Playwright, all on loopback.

Log in with the token, see mail accepted, refused and (backscatter) quarantined over SMTP
appear in the totals, the chart and the decision list, follow a decision to the message it
held, read a hostile HTML message as inert text, release a held message to smtp-sink with
NOTIFY=NEVER, delete another, log out. Without a token the same pages are read-only.
Screenshots go to the test's temporary directory; `SCATTERGATE_SCREENSHOTS=docs/img`
refreshes the ones in the docs.
"""

from __future__ import annotations

import os
import smtplib
import time
from pathlib import Path
from typing import Iterator

import pytest

from scattergate.delivery.quarantine import Quarantine
from scattergate.web import service as web_service
from scattergate.web.charts import zone_name
from tests.conftest import IN_CI, require_binary
from tests.support.backscatter_mail import OUTSIDE, send_unsolicited_bounce

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the test extras install it
    if IN_CI:
        raise
    pytest.skip("playwright is not installed (pip install -e '.[test]')", allow_module_level=True)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TOKEN = "dashboard-test-token-0123456789"
HELD = (b"From: Victim <victim9@soft.example>\r\nTo: nobody9@example.org\r\nSubject: quarterly report\r\n"
        b"Message-ID: <report-9@soft.example>\r\n\r\nPlease find the report attached.\r\n")
HOSTILE = (b"From: x@junk.example\r\nTo: nobody9@example.org\r\nSubject: open me\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/html; charset=utf-8\r\n\r\n"
           b'<script>document.title="pwned"</script><img src="http://tracker.example/pixel.gif">'
           b"<p>Click <a href=\"http://phish.example/\">here</a></p>\r\n")


@pytest.fixture
def browser() -> Iterator[Browser]:
    chromium = require_binary("chromium")  # CI: a missing chromium fails, never skips
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def start_site(gateway, make_config, smtp_sink, tmp_path: Path):  # type: ignore[no-untyped-def]
    services = []

    def start(*, token: bool):  # type: ignore[no-untyped-def]
        http = {"listen": "127.0.0.1:0"}
        if token:
            token_file = tmp_path / "http.token"
            token_file.write_text(TOKEN + "\n")
            token_file.chmod(0o600)
            http["token_file"] = str(token_file)
        sink = smtp_sink()
        config = make_config(
            receive={"domains": ["example.org"]},
            delivery={"relay": sink.address, "verify_recipients": False},
            backscatter={"mode": "quarantine", "batv_mode": "off"},  # hold backscatter, to show it
            http=http,
        )
        gw = gateway(config)
        web = gw.call(web_service.start(config, gw.gateway, gw.store))
        assert web is not None
        services.append((gw, web))
        return gw, sink, f"http://127.0.0.1:{web.port}"

    yield start
    for gw, web in services:
        gw.call(web.stop())


@pytest.fixture
def shot(tmp_path: Path):  # type: ignore[no-untyped-def]
    images = Path(os.environ.get("SCATTERGATE_SCREENSHOTS", tmp_path))

    def take(page: Page, name: str) -> None:
        images.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(images / name), full_page=True)
        assert (images / name).stat().st_size > 0

    return take


def send_traffic(gw) -> None:  # type: ignore[no-untyped-def]
    """One message accepted, one relay attempt refused, one unsolicited bounce quarantined."""
    with smtplib.SMTP(*gw.address, source_address=OUTSIDE) as client:
        client.sendmail("alice@partner.example", ["user@example.org"],
                        b"From: alice@partner.example\r\nTo: user@example.org\r\nSubject: lunch\r\n\r\nNoon?\r\n")
    with smtplib.SMTP(*gw.address, source_address=OUTSIDE) as client:
        client.ehlo("spammer.example")
        client.mail("forged@victim.example")
        assert client.rcpt("target@elsewhere.example")[0] == 554
    code, reply = send_unsolicited_bounce(gw.address)
    assert code == 250 and b"held as" in reply

    async def count() -> None:  # as the milter counts a recipient it gave NOTIFY=NEVER
        gw.gateway.recorder.count("dsn.suppressed")

    gw.call(count())
    gw.flush()  # the recorder writes decisions in batches; make them visible now


def test_dashboard_totals_links_message_page_release_and_logout(browser: Browser, start_site, shot) -> None:  # type: ignore[no-untyped-def]
    gw, sink, url = start_site(token=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    page.goto(url + "/")
    expect(page).to_have_url(url + "/login")
    page.fill("input[name=token]", "not-the-token-at-all")
    page.click("button:text('Log in')")
    expect(page.locator("p.note.err")).to_have_text("Wrong token.")
    page.fill("input[name=token]", TOKEN)
    page.click("button:text('Log in')")
    expect(page.locator("h1")).to_have_text("scattergate")

    send_traffic(gw)
    page.reload()
    expect(page.locator("#total-accepted")).to_have_text("1")
    expect(page.locator("#total-refused")).to_have_text("1")
    expect(page.locator("#total-quarantined")).to_have_text("1")
    # Quarantined backscatter counts as backscatter stopped (it showed "0" while only rejects counted).
    expect(page.locator("#total-backscatter")).to_have_text("1")
    expect(page.locator("#backscatter-quarantined")).to_have_text("1")
    expect(page.locator("#total-dsn-suppressed")).to_have_text("1")  # fed by the bare counter too
    expect(page.locator("#zone")).to_contain_text(zone_name(time.time()))
    chart = page.locator("svg.chart").first
    expect(chart).to_be_visible()
    expect(chart.locator("text.zone")).to_contain_text("hour starting")
    expect(chart).to_contain_text("backscatter stopped (1)")
    expect(page.locator("svg.chart").nth(1)).to_contain_text("DSNs suppressed (1)")
    refused = page.locator("tr.decision", has_text="target@elsewhere.example")
    expect(refused.locator("td.reject")).to_have_text("reject")
    expect(refused).to_contain_text("relay.denied")
    expect(refused).to_contain_text("not in a domain we receive for")  # the finding in words
    shot(page, "dashboard-overview.png")

    # From the decision to the message it held.
    held_row = page.locator("tr.decision", has_text="backscatter.unsolicited")
    expect(held_row).to_contain_text("refers to no message we sent")
    held_id = held_row.locator("a.held").inner_text()
    held_row.locator("a.held").click()
    expect(page.locator("h1")).to_have_text(f"Message {held_id}")
    expect(page.locator("#headers")).to_contain_text("multipart/report")
    expect(page.locator("#body")).to_contain_text("550 5.1.1 no such user")
    expect(page.locator("#body")).to_contain_text("Final-Recipient: rfc822; x@remote.example")
    expect(page.locator("tr.decision")).to_contain_text("backscatter.unsolicited")
    shot(page, "dashboard-held-bounce.png")

    # A hostile HTML message is shown as its text: no script runs, nothing is fetched.
    quarantine = Quarantine(gw.config.data_dir / "quarantine", gw.store)
    hostile = quarantine.hold(HOSTILE, "x@junk.example", ["nobody9@example.org"], "spamd.tagged")
    page.goto(f"{url}/quarantine/{hostile.id}")
    expect(page.locator("#body")).to_contain_text('<img src="http://tracker.example/pixel.gif">')
    expect(page.locator("main img")).to_have_count(0)
    expect(page.locator("main a[href^='http://phish']")).to_have_count(0)
    assert page.title() != "pwned"
    shot(page, "dashboard-message.png")

    # A message the spool held instead of bouncing: search, release (NOTIFY=NEVER), delete another.
    held = quarantine.hold(HELD, "victim9@soft.example", ["nobody9@example.org"],
                           "bounce suppressed: sender-unverified (spf=softfail, dkim=none)")
    page.click("header >> text=Quarantine")
    expect(page.locator(f"#q-{held.id}")).to_be_visible()
    expect(page.locator(f"#q-{held.id}")).to_contain_text("safe-bounce rule")
    page.fill("input[name=q]", "soft.example")
    page.click("text=Search")
    expect(page.locator(f"#q-{hostile.id}")).to_have_count(0)
    expect(page.locator(f"#q-{held.id}")).to_be_visible()
    shot(page, "dashboard-quarantine.png")
    page.locator(f"#q-{held.id} button:text('Release')").click()
    expect(page.locator("p.note")).to_contain_text(f"Released {held.id}")
    expect(page.locator(f"#q-{held.id}")).to_have_count(0)
    released = [m for m in sink.messages() if b"Subject: quarterly report" in m]
    assert len(released) == 1
    assert b"X-Rcpt-Args: <nobody9@example.org> NOTIFY=NEVER" in released[0]
    page.goto(url + "/quarantine")
    page.locator(f"#q-{hostile.id} button:text('Delete')").click()
    expect(page.locator("p.note")).to_contain_text(f"Deleted {hostile.id}")
    assert gw.store.quarantine_get(hostile.id) is None

    # Logging out ends the session: the same browser is sent back to the login page.
    page.click("button:text('log out')")
    expect(page).to_have_url(url + "/login")
    page.goto(url + "/quarantine")
    expect(page).to_have_url(url + "/login")
    assert all(u.startswith(url) for u in requested), [u for u in requested if not u.startswith(url)]


def test_without_a_token_the_dashboard_shows_but_changes_nothing(browser: Browser, start_site) -> None:  # type: ignore[no-untyped-def]
    gw, _, url = start_site(token=False)
    item = Quarantine(gw.config.data_dir / "quarantine", gw.store).hold(
        HELD, "victim9@soft.example", ["nobody9@example.org"], "rspamd.quarantine")
    page = browser.new_page()
    page.goto(url + "/quarantine")
    expect(page.locator("#read-only")).to_contain_text("need a token")
    expect(page.locator(f"#q-{item.id}")).to_contain_text("rspamd's action asked to hold")
    expect(page.locator("button:text('Release')")).to_have_count(0)
    page.click(f"a:text('{item.id}')")
    expect(page.locator("#body")).to_contain_text("Please find the report attached.")
    expect(page.locator("button:text('Delete')")).to_have_count(0)
