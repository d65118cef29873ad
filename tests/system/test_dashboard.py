"""The dashboard in a real browser: Debian's chromium driven by Playwright, all on loopback.

Open the dashboard, see a message refused over SMTP appear, look at a quarantined message's
headers, release it and find it at smtp-sink with NOTIFY=NEVER. Screenshots go to the test's
temporary directory; `SCATTERGATE_SCREENSHOTS=docs/img` refreshes the ones in the docs.
"""

from __future__ import annotations

import os
import smtplib
from pathlib import Path
from typing import Iterator

import pytest

from scattergate.delivery.quarantine import Quarantine
from scattergate.web import service as web_service
from tests.conftest import IN_CI, require_binary

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the test extras install it
    if IN_CI:
        raise
    pytest.skip("playwright is not installed (pip install -e '.[test]')", allow_module_level=True)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
HELD = (b"From: Victim <victim9@soft.example>\r\nTo: nobody9@example.org\r\nSubject: quarterly report\r\n"
        b"Message-ID: <report-9@soft.example>\r\n\r\nPlease find the report attached.\r\n")


@pytest.fixture
def browser() -> Iterator[Browser]:
    chromium = require_binary("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def site(gateway, make_config, smtp_sink):  # type: ignore[no-untyped-def]
    sink = smtp_sink()
    config = make_config(
        receive={"domains": ["example.org"]},
        delivery={"relay": sink.address, "verify_recipients": False},
        http={"listen": "127.0.0.1:0"},
    )
    gw = gateway(config)
    web = gw.call(web_service.start(config, gw.gateway, gw.store))
    assert web is not None
    yield gw, sink, f"http://127.0.0.1:{web.port}"
    gw.call(web.stop())


@pytest.fixture
def shot(tmp_path: Path):  # type: ignore[no-untyped-def]
    images = Path(os.environ.get("SCATTERGATE_SCREENSHOTS", tmp_path))

    def take(page: Page, name: str) -> None:
        images.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(images / name), full_page=True)
        assert (images / name).stat().st_size > 0

    return take


def test_refused_message_appears_and_release_delivers(browser: Browser, site, shot) -> None:  # type: ignore[no-untyped-def]
    gw, sink, url = site
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.goto(url + "/")
    expect(page.locator("h1")).to_have_text("scattergate")

    # An SMTP client tries to relay through us: refused at RCPT, inside the dialogue.
    with smtplib.SMTP(*gw.address) as client:
        client.ehlo("spammer.example")
        client.mail("forged@victim.example")
        code, _ = client.rcpt("target@elsewhere.example")
        assert code == 554
    gw.flush()  # the recorder writes decisions in batches; make this one visible now
    page.reload()
    row = page.locator("tr.decision", has_text="target@elsewhere.example")
    expect(row).to_have_count(1)
    expect(row.locator("td.reject")).to_have_text("reject")
    expect(row).to_contain_text("relay.denied")
    expect(page.locator("#refused-total")).to_have_text("1")
    expect(page.locator("svg.chart").first).to_be_visible()
    shot(page, "dashboard-overview.png")

    # A message held instead of bounced (the safe-bounce rule), and one to delete.
    quarantine = Quarantine(gw.config.data_dir / "quarantine", gw.store)
    held = quarantine.hold(HELD, "victim9@soft.example", ["nobody9@example.org"],
                           "bounce suppressed: sender-unverified (spf=softfail, dkim=none)")
    junk = quarantine.hold(HELD, "other@junk.example", ["nobody9@example.org"], "backscatter.unsolicited")
    page.click("header >> text=Quarantine")
    expect(page.locator(f"#q-{held.id}")).to_be_visible()
    page.fill("input[name=q]", "soft.example")
    page.click("text=Search")
    expect(page.locator(f"#q-{junk.id}")).to_have_count(0)
    expect(page.locator(f"#q-{held.id}")).to_be_visible()
    shot(page, "dashboard-quarantine.png")

    page.click(f"a:text('{held.id}')")
    expect(page.locator("h1")).to_have_text(f"Message {held.id}")
    expect(page.locator("table")).to_contain_text("quarterly report")
    shot(page, "dashboard-message.png")
    page.click("button:text('Release')")
    expect(page.locator("p.note")).to_contain_text(f"Released {held.id}")
    expect(page.locator(f"#q-{held.id}")).to_have_count(0)
    (dump,) = sink.messages()
    assert b"X-Rcpt-Args: <nobody9@example.org> NOTIFY=NEVER" in dump
    assert b"Subject: quarterly report" in dump

    page.locator(f"#q-{junk.id} button:text('Delete')").click()
    expect(page.locator("p.note")).to_contain_text(f"Deleted {junk.id}")
    expect(page.locator(f"#q-{junk.id}")).to_have_count(0)
    assert gw.store.quarantine_list() == []
