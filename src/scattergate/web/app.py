"""The routes of the HTTP listener: /metrics and the server-rendered dashboard.

Pages are plain HTML with inline SVG charts: no JavaScript and no front-end build. Every
value that came from mail (addresses, findings, headers) is escaped. State-changing requests
are POSTs with a CSRF token.
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
from scattergate.web.auth import COOKIE, Guard
from scattergate.web.http import Request, Response, redirect, text
from scattergate.web.metrics import CONTENT_TYPE, Metrics
from scattergate.web.quarantine_ops import QuarantineError, QuarantineOps, headers

_ITEM = re.compile(r"^/quarantine/([0-9A-Za-z_-]{1,64})(/release|/delete)?$")
CHART_DECISIONS = 20_000  # decisions read for the charts (the newest ones)

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
header{background:#2c3e50;color:#fff;padding:8px 16px}header a{color:#fff;margin-right:16px}
main{padding:12px 16px}table{border-collapse:collapse;width:100%;margin:8px 0}
th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
td.f{font-family:monospace;font-size:12px;word-break:break-all}.reject{color:#c0392b}
.tempfail{color:#d35400}.accept{color:#27ae60}.quarantine{color:#8e44ad}
.note{background:#eef;padding:6px 10px;border-radius:4px}.err{background:#fee}
form.inline{display:inline}.totals span{margin-right:18px}table.h th{width:14em}
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
            if path == "/logout":
                return redirect("/login", ("Set-Cookie", f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"))
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
        page = (
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(title)} · scattergate</title><style>{_STYLE}</style></head><body>"
            '<header><a href="/">Overview</a><a href="/decisions">Decisions</a>'
            f'<a href="/quarantine">Quarantine</a><a href="/metrics">Metrics</a>{logout}</header>'
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
                cookie = f"{COOKIE}={self.guard.session_value()}; Path=/; HttpOnly; SameSite=Strict"
                return redirect("/", ("Set-Cookie", cookie))
            error = '<p class="note err">Wrong token.</p>'
        form = (f'{error}<form method="post" action="/login"><label>Token <input type="password" name="token" '
                'autocomplete="current-password" autofocus></label> <button>Log in</button></form>')
        return self._page(request, "Log in", form, 401 if error else 200)

    async def _overview(self, request: Request) -> Response:
        counters, records = await asyncio.gather(
            asyncio.to_thread(self.store.counters),
            asyncio.to_thread(self.store.recent_decisions, CHART_DECISIONS),
        )
        now = time.time()
        self.samples.add(counters, now)
        starts = charts.hour_starts(now, 24)
        dsn = [
            charts.Series("DSNs sent", "#27ae60", self.samples.series("dsn.sent.", starts)),
            charts.Series("DSNs suppressed", "#c0392b", self.samples.series("dsn.suppressed.", starts)),
        ]
        def total(prefix: str) -> int:
            return sum(v for k, v in counters.items() if k.startswith(prefix))

        refused = sum(v for k, v in counters.items() if k.startswith("decisions.") and
                      k.endswith((".reject", ".tempfail")))
        backscatter = sum(1 for r in records if charts.is_backscatter_refusal(r))
        totals = (
            '<p class="totals">'
            f"<span>sessions <b>{total('sessions')}</b></span>"
            f"<span>refused in dialogue <b id=refused-total>{refused}</b></span>"
            f"<span>backscatter refused <b id=backscatter-total>{backscatter}</b></span>"
            f"<span>DSNs sent <b>{total('dsn.sent.')}</b></span>"
            f"<span>DSNs suppressed <b>{total('dsn.suppressed.')}</b></span></p>"
        )
        body = (
            totals
            + charts.svg_chart("Decisions per hour, last 24 h", starts, charts.decision_series(records, starts))
            + charts.svg_chart("DSNs per hour (since this listener started)", starts, dsn)
            + "<h2>Latest decisions</h2>" + _decision_table(records[:20])
        )
        return self._page(request, "scattergate", body)

    async def _decisions(self, request: Request) -> Response:
        verdict = request.query.get("verdict", "")
        records = await asyncio.to_thread(self.store.recent_decisions, 500)
        if verdict:
            records = [r for r in records if r.verdict == verdict]
        links = " ".join(f'<a href="/decisions?verdict={v}">{v}</a>' for v in ("reject", "tempfail", "quarantine", "accept"))
        body = f'<p>Show: <a href="/decisions">all</a> {links}</p>' + _decision_table(records[:200])
        return self._page(request, "Latest decisions", body)

    async def _quarantine(self, request: Request) -> Response:
        search = request.query.get("q", "")
        items = await asyncio.to_thread(self.ops.list, search, 200)
        note = request.query.get("done", "")
        body = (f'<p class="note">{html.escape(note)}</p>' if note else "") + (
            f'<form method="get" action="/quarantine"><input name="q" value="{html.escape(search)}" '
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
                f"<td>{_when(item.time)}</td><td>&lt;{html.escape(item.sender)}&gt;</td>"
                f"<td>{html.escape(', '.join(item.recipients))}</td><td>{item.size}</td>"
                f"<td>{html.escape(item.reason)}</td><td>{self._actions(request, item.id)}</td></tr>"
            )
        return ("<table><tr><th>id</th><th>time</th><th>sender</th><th>recipients</th><th>bytes</th>"
                "<th>reason</th><th></th></tr>" + "".join(rows) + "</table>")

    def _actions(self, request: Request, item_id: str) -> str:
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
        fields = "".join(f"<tr><th>{html.escape(n)}</th><td class=f>{html.escape(v)}</td></tr>" for n, v in headers(content))
        body = (
            f"<p>From &lt;{html.escape(item.sender)}&gt; to {html.escape(', '.join(item.recipients))}, "
            f"{item.size} bytes, held {_when(item.time)}: {html.escape(item.reason)}</p>"
            f"<p>{self._actions(request, item.id)}</p><h2>Headers</h2><table class='h'>{fields}</table>"
        )
        return self._page(request, f"Message {item.id}", body)

    async def _act(self, request: Request, item_id: str, action: str) -> Response:
        if not self.guard.csrf_ok(request, request.form().get("csrf", "")):
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
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _decision_table(records: Sequence[DecisionRecord]) -> str:
    if not records:
        return "<p>No decisions yet.</p>"
    rows = "".join(
        f'<tr class="decision"><td>{_when(r.time)}</td><td>{html.escape(r.phase)}</td>'
        f'<td class="{html.escape(r.verdict)}">{html.escape(r.verdict)}</td><td>{html.escape(r.client)}</td>'
        f"<td>&lt;{html.escape(r.sender)}&gt;</td><td>{html.escape(', '.join(r.recipients))}</td>"
        f"<td>{html.escape(r.reply)}</td><td class=f>{html.escape(' '.join(r.findings))}</td></tr>"
        for r in records
    )
    return ("<table><tr><th>time</th><th>phase</th><th>verdict</th><th>client</th><th>from</th><th>to</th>"
            "<th>reply</th><th>findings</th></tr>" + rows + "</table>")
