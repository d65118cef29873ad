"""The routes of the HTTP listener: /metrics and the server-rendered dashboard.

Pages are plain HTML with inline SVG charts: no JavaScript and no front-end build. Every
value that came from mail (addresses, findings, headers, bodies) is escaped, and the
Content-Security-Policy (web/http.py) forbids loading anything from anywhere, so a held
message can never make the browser fetch a tracker. State-changing requests are POSTs with a
CSRF token, and only with a token configured (web/auth.py says why).
"""

from __future__ import annotations

import asyncio
import html
import re
import time
from typing import Sequence
from urllib.parse import quote, urlencode

from scattergate.config import Config
from scattergate.state.store import DecisionRecord, QuarantineItem, StateStore
from scattergate.web import charts
from scattergate.web.auth import Guard
from scattergate.web.findings import readable
from scattergate.web.http import Request, Response, redirect, text
from scattergate.web.message_view import text_view
from scattergate.web.metrics import CONTENT_TYPE, Metrics
from scattergate.web.quarantine_ops import QuarantineError, QuarantineOps, headers

_ITEM = re.compile(r"^/quarantine/([0-9A-Za-z_-]{1,64})(/release|/delete)?$")
# The reply of a decision that held a message names the quarantine id (pipeline.py `_hold`).
_HELD_AS = re.compile(r"\bheld as ([0-9A-Za-z_-]{1,64})")
CHART_DECISIONS = 20_000  # decisions read for the charts and the 24-hour totals (the newest ones)
HELD_SHOWN = 10_000  # quarantine entries counted for the overview
LINK_DECISIONS = 2_000  # decisions searched for the one that held a quarantined message
READ_ONLY = ("Read-only: releasing and deleting need a token (set http.token_file, then log in), "
             "or use `scattergate quarantine` on this host.")

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
header{background:#2c3e50;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:center}
header a{color:#fff}header .zone{margin-left:auto;font-size:12px;opacity:.8}
main{padding:12px 16px}table{border-collapse:collapse;width:100%;margin:8px 0}
th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
td.t{white-space:nowrap}td.f,.f{font-family:monospace;font-size:12px;word-break:break-all}.reject{color:#c0392b}
.tempfail{color:#d35400}.accept{color:#27ae60}.quarantine{color:#2980b9}
.note{background:#eef;padding:6px 10px;border-radius:4px}.err{background:#fee}
form.inline{display:inline}table.h th{width:14em}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:9em}
.card b{display:block;font-size:24px}.card small{color:#666}
.finding{display:block}.finding code{font-weight:bold}.finding .why{color:#444}
.finding .detail{color:#777;font-size:12px;word-break:break-all}
pre.body{background:#f7f7f7;border:1px solid #ddd;padding:8px;white-space:pre-wrap;word-break:break-word;max-height:40em;overflow:auto}
"""


class Dashboard:
    def __init__(self, config: Config, store: StateStore, metrics: Metrics, guard: Guard) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.guard = guard
        self.ops = QuarantineOps(config, store)
        self.samples = charts.CounterSamples()

    async def handle(self, request: Request) -> Response:
        if not self.guard.host_allowed(request):
            return text(421, "this dashboard answers only to a loopback Host name")
        path = request.path
        if path == "/login":
            return await self._login(request)
        if path == "/logout" and request.method == "POST":
            # Always allowed: ending a session needs no proof beyond the cookie it ends.
            return redirect("/login" if self.guard.required else "/", ("Set-Cookie", self.guard.logout(request)))
        if not self.guard.authenticated(request):
            if path == "/metrics" or request.method != "GET":
                return Response(401, b"authentication required\n", "text/plain; charset=utf-8",
                                [("WWW-Authenticate", 'Bearer realm="scattergate"')])
            return redirect("/login")
        if path == "/metrics" and request.method == "GET":
            body = await asyncio.to_thread(self.metrics.exposition)
            return Response(200, body, CONTENT_TYPE)
        if request.method == "GET":
            if path == "/":
                return await self._overview(request)
            if path == "/decisions":
                return await self._decisions(request)
            if path == "/quarantine":
                return await self._quarantine(request)
            match = _ITEM.match(path)
            if match and not match.group(2):
                return await self._item(request, match.group(1))
            return text(404, "not found")
        if request.method == "POST":
            match = _ITEM.match(path)
            if match and match.group(2):
                return await self._act(request, match.group(1), match.group(2)[1:])
            return text(404, "not found")
        return text(405, "method not allowed")

    # -- pages -----------------------------------------------------------------------------

    def _page(self, request: Request, title: str, body: str, status: int = 200) -> Response:
        logout = ""
        if self.guard.required:
            logout = (f'<form class="inline" method="post" action="/logout">{self._csrf(request)}'
                      '<button>log out</button></form>')
        zone = html.escape(charts.zone_name(time.time()))
        page = (
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(title)} · scattergate</title><style>{_STYLE}</style></head><body>"
            '<header><a href="/">Overview</a><a href="/decisions">Decisions</a>'
            f'<a href="/quarantine">Quarantine</a><a href="/metrics">Metrics</a>{logout}'
            f'<span class="zone" id="zone">times in {zone}</span></header>'
            f"<main><h1>{html.escape(title)}</h1>{body}</main></body></html>"
        )
        return Response(status, page.encode())

    def _csrf(self, request: Request) -> str:
        return f'<input type="hidden" name="csrf" value="{self.guard.csrf_token(request)}">'

    async def _login(self, request: Request) -> Response:
        if not self.guard.required:
            return redirect("/")
        error = ""
        if request.method == "POST":
            if self.guard.token_matches(request.form().get("token", "")):
                cookie = await asyncio.to_thread(self.guard.login, request)
                return redirect("/", ("Set-Cookie", cookie))
            error = '<p class="note err">Wrong token.</p>'
        form = (f'{error}<form method="post" action="/login"><label>Token <input type="password" name="token" '
                'autocomplete="current-password" autofocus></label> <button>Log in</button></form>')
        return self._page(request, "Log in", form, 401 if error else 200)

    async def _overview(self, request: Request) -> Response:
        counters, records, held = await asyncio.gather(
            asyncio.to_thread(self.store.counters),
            asyncio.to_thread(self.store.recent_decisions, CHART_DECISIONS),
            asyncio.to_thread(self.ops.list, "", HELD_SHOWN + 1),
        )
        now = time.time()
        self.samples.add(counters, now)
        starts = charts.hour_starts(now, 24)
        day = charts.totals(records, now - 24 * 3600)
        window = "last 24 hours"
        if len(records) >= CHART_DECISIONS and records[-1].time > now - 24 * 3600:
            window = f"newest {CHART_DECISIONS:,} decisions"  # a busy day: say what is counted
        suppressed = charts.counter_total(counters, "dsn.suppressed")
        cards = (
            f'<h2>Decisions, {window}</h2><div class="cards">'
            + _card("total-accepted", "accepted", day.accepted, "delivered or queued")
            + _card("total-refused", "refused", day.refused, "reject or tempfail, in the dialogue")
            + _card("total-quarantined", "quarantined", day.quarantined, "held by a decision")
            + _card("total-backscatter", "backscatter stopped", day.backscatter_stopped,
                    f'<span id="backscatter-refused">{day.backscatter_refused}</span> refused, '
                    f'<span id="backscatter-quarantined">{day.backscatter_quarantined}</span> quarantined')
            + '</div><h2>Since the state store began</h2><div class="cards">'
            + _card("total-sessions", "sessions", charts.counter_total(counters, "sessions"), "SMTP connections")
            + _card("total-dsn-sent", "DSNs sent", charts.counter_total(counters, "dsn.sent"), "to proven senders")
            + _card("total-dsn-suppressed", "DSNs suppressed", suppressed,
                    f'{charts.counter_total(counters, "dsn.suppressed.failure")} failures quarantined, '
                    f'{counters.get("dsn.suppressed", 0)} NOTIFY=NEVER (milter)')
            + _card("total-held", "held now", min(len(held), HELD_SHOWN), '<a href="/quarantine">in the quarantine</a>'
                    + (f" (at least; counted up to {HELD_SHOWN:,})" if len(held) > HELD_SHOWN else ""))
            + "</div>"
        )
        dsn = [
            charts.Series("DSNs sent", "#27ae60", self.samples.series("dsn.sent", starts)),
            charts.Series("DSNs suppressed", "#c0392b", self.samples.series("dsn.suppressed", starts)),
        ]
        body = (
            cards
            + charts.svg_chart("Decisions per hour, last 24 h", starts, charts.decision_series(records, starts))
            + charts.svg_chart("DSNs per hour (since this listener started)", starts, dsn)
            + '<h2>Latest decisions <small><a href="/decisions">all</a></small></h2>' + _decision_table(records[:20])
        )
        return self._page(request, "scattergate", body)

    async def _decisions(self, request: Request) -> Response:
        verdict = request.query.get("verdict", "")
        records = await asyncio.to_thread(self.store.recent_decisions, 500)
        if verdict == "backscatter":
            records = [r for r in records if charts.backscatter_outcome(r)]
        elif verdict:
            records = [r for r in records if r.verdict == verdict]
        links = " ".join(f'<a href="/decisions?verdict={v}">{v}</a>'
                         for v in ("reject", "tempfail", "quarantine", "accept", "backscatter", "release", "delete"))
        body = f'<p>Show: <a href="/decisions">all</a> {links}</p>' + _decision_table(records[:200])
        return self._page(request, "Latest decisions", body)

    async def _quarantine(self, request: Request) -> Response:
        search = request.query.get("q", "")
        items = await asyncio.to_thread(self.ops.list, search, 200)
        note = request.query.get("done", "")
        failed = note.startswith("Failed")
        body = (f'<p class="note{" err" if failed else ""}">{html.escape(note)}</p>' if note else "") + (
            ("" if self.guard.writable else f'<p class="note" id="read-only">{html.escape(READ_ONLY)}</p>')
            + f'<form method="get" action="/quarantine"><input name="q" value="{html.escape(search)}" '
            'placeholder="id, sender, recipient, reason"> <button>Search</button></form>'
            + self._quarantine_table(request, items)
        )
        return self._page(request, "Quarantine", body)

    def _quarantine_table(self, request: Request, items: Sequence[QuarantineItem]) -> str:
        if not items:
            return "<p>No quarantined messages.</p>"
        rows = []
        for item in items:
            rows.append(
                f'<tr id="q-{html.escape(item.id)}"><td><a href="/quarantine/{quote(item.id)}">{html.escape(item.id)}</a></td>'
                f'<td class="t">{_when(item.time)}</td><td>&lt;{html.escape(item.sender)}&gt;</td>'
                f"<td>{html.escape(', '.join(item.recipients))}</td><td>{item.size}</td>"
                f"<td>{_reason(item.reason)}</td><td>{self._actions(request, item.id)}</td></tr>"
            )
        return ("<table><tr><th>id</th><th>held at</th><th>sender</th><th>recipients</th><th>bytes</th>"
                "<th>reason</th><th></th></tr>" + "".join(rows) + "</table>")

    def _actions(self, request: Request, item_id: str) -> str:
        if not self.guard.writable:
            return ""
        forms = []
        for action, label in (("release", "Release"), ("delete", "Delete")):
            forms.append(f'<form class="inline" method="post" action="/quarantine/{quote(item_id)}/{action}">'
                         f'{self._csrf(request)}<button name="action" value="{action}">{label}</button></form>')
        return " ".join(forms)

    async def _item(self, request: Request, item_id: str) -> Response:
        try:
            item = await asyncio.to_thread(self.ops.get, item_id)
            content = await asyncio.to_thread(self.ops.content, item)
        except QuarantineError as exc:
            return self._page(request, "Quarantine", f'<p class="note err">{html.escape(str(exc))}</p>', 404)
        records, view = await asyncio.gather(
            asyncio.to_thread(self.store.recent_decisions, LINK_DECISIONS),
            asyncio.to_thread(text_view, content),
        )
        held_by = [r for r in records if _held_id(r) == item.id]
        fields = "".join(f"<tr><th>{html.escape(n)}</th><td class=f>{html.escape(v)}</td></tr>" for n, v in headers(content))
        parts = "".join(
            f"<tr><td>{html.escape(p.content_type)}</td><td>{html.escape(p.filename)}</td><td>{p.size}</td>"
            f"<td>{'shown below' if p.shown else 'not shown'}</td></tr>" for p in view.parts)
        decision = (("<h2>The decision that held it</h2>" + _decision_table(held_by)) if held_by else
                    "<p>Held by the spool's bounce rule or by another gateway: no decision of this one names it.</p>")
        body_text = html.escape(view.text) if view.text else "(no text part)"
        more = '<p class="note">Shown up to 64 KiB.</p>' if view.truncated else ""
        body = (
            "<table class='h'>"
            f"<tr><th>sender</th><td>&lt;{html.escape(item.sender)}&gt;</td></tr>"
            f"<tr><th>recipients</th><td>{html.escape(', '.join(item.recipients))}</td></tr>"
            f"<tr><th>size</th><td>{item.size} bytes</td></tr><tr><th>held at</th><td>{_when(item.time)}</td></tr>"
            f"<tr><th>reason</th><td>{_reason(item.reason)}</td></tr></table>"
            + (f"<p>{self._actions(request, item.id)}</p>" if self.guard.writable else
               f'<p class="note" id="read-only">{html.escape(READ_ONLY)}</p>')
            + decision
            + f"<h2>Headers</h2><table class='h' id='headers'>{fields}</table>"
            + "<h2>Parts</h2><table><tr><th>type</th><th>file name</th><th>bytes</th><th></th></tr>" + parts + "</table>"
            + "<h2>Text <small>(as plain text: nothing rendered, nothing loaded)</small></h2>"
            + f'<pre class="body" id="body">{body_text}</pre>{more}'
        )
        return self._page(request, f"Message {item.id}", body)

    async def _act(self, request: Request, item_id: str, action: str) -> Response:
        if not self.guard.writable:
            return text(403, READ_ONLY)
        # A bearer token is not sent by a browser on its own: no cross-site request can carry it.
        if not self.guard.bearer(request) and not self.guard.csrf_ok(request, request.form().get("csrf", "")):
            return text(403, "bad or missing CSRF token: reload the page and try again")
        try:
            if action == "release":
                result = await self.ops.release(item_id, timeout=self.config.delivery.relay_timeout)
                done = f"Released {result.item.id} to {result.downstream}: {result.reply}"
            else:
                await asyncio.to_thread(self.ops.delete, item_id)
                done = f"Deleted {item_id}"
        except QuarantineError as exc:
            done = f"Failed: {exc}"
        return redirect("/quarantine?" + urlencode({"done": done}))


def _when(epoch: float) -> str:
    local = time.localtime(epoch)
    iso = time.strftime("%Y-%m-%dT%H:%M:%S%z", local)
    return f'<time datetime="{iso}">{time.strftime("%Y-%m-%d %H:%M:%S", local)}</time>'


def _card(ident: str, label: str, value: int, note: str) -> str:
    return f'<div class="card"><span>{label}</span><b id="{ident}">{value}</b><small>{note}</small></div>'


def _held_id(record: DecisionRecord) -> str:
    match = _HELD_AS.search(record.reply) if record.verdict == "quarantine" else None
    return match.group(1) if match else ""


def _findings(findings: Sequence[str]) -> str:
    parts = []
    for finding in map(readable, findings):
        detail = f' <span class="detail">{html.escape(finding.detail)}</span>' if finding.detail else ""
        score = f" ({html.escape(finding.score)})" if finding.score else ""
        parts.append(f'<span class="finding"><code>{html.escape(finding.key)}</code>{score}: '
                     f'<span class="why">{html.escape(finding.explanation)}</span>{detail}</span>')
    return "".join(parts)


def _reason(reason: str) -> str:
    """A quarantine reason: the findings of the decision ("a; b") or the spool's bounce note."""
    if reason.startswith("bounce suppressed:"):
        return (html.escape(reason) + '<span class="finding why">No DSN was sent: the sender is not proven '
                "genuine, so a bounce could hit a forged address (the safe-bounce rule).</span>")
    return _findings([part.strip() for part in reason.split("; ") if part.strip()])


def _decision_table(records: Sequence[DecisionRecord]) -> str:
    if not records:
        return "<p>No decisions yet.</p>"
    rows = []
    for r in records:
        held = _held_id(r)
        message = f'<a class="held" href="/quarantine/{quote(held)}">{html.escape(held)}</a>' if held else ""
        rows.append(
            f'<tr class="decision"><td class="t">{_when(r.time)}</td><td>{html.escape(r.phase)}</td>'
            f'<td class="{html.escape(r.verdict)}">{html.escape(r.verdict)}</td><td>{html.escape(r.client)}</td>'
            f"<td>&lt;{html.escape(r.sender)}&gt;</td><td>{html.escape(', '.join(r.recipients))}</td>"
            f"<td>{html.escape(r.reply)}</td><td>{_findings(r.findings)}</td><td>{message}</td></tr>"
        )
    return ("<table><tr><th>time</th><th>phase</th><th>verdict</th><th>client</th><th>from</th><th>to</th>"
            "<th>reply</th><th>findings</th><th>message</th></tr>" + "".join(rows) + "</table>")
