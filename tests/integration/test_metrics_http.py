"""The HTTP listener's protection: token, login cookie, CSRF, loopback Host names, config rules."""

from __future__ import annotations

import http.client
import os
from pathlib import Path
from urllib.parse import urlencode

import pytest

from scattergate.cli import build_parser, load_config
from scattergate.config import ConfigError
from scattergate.delivery.quarantine import Quarantine
from scattergate.web import service as web_service
from scattergate.web.auth import COOKIE
from scattergate.web.http import Request

TOKEN = "s3cret-token-for-tests-0123456789"


def request(port: int, method: str, path: str, *, headers: dict[str, str] | None = None,
            form: dict[str, str] | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = urlencode(form) if form is not None else None
    all_headers = {"Content-Type": "application/x-www-form-urlencoded"} if form is not None else {}
    all_headers.update(headers or {})
    connection.request(method, path, body=body, headers=all_headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def token_file(tmp_path: Path, mode: int = 0o600) -> str:
    path = tmp_path / "http.token"
    path.write_text(TOKEN + "\n")
    os.chmod(path, mode)
    return str(path)


@pytest.fixture
def start(gateway, make_config):  # type: ignore[no-untyped-def]
    services = []

    def run(**http: str):  # type: ignore[no-untyped-def]
        config = make_config(receive={"domains": ["example.org"]}, http={"listen": "127.0.0.1:0", **http})
        gw = gateway(config)
        web = gw.call(web_service.start(config, gw.gateway, gw.store))
        services.append((gw, web))
        return gw, web

    yield run
    for gw, web in services:
        if web is not None:
            gw.call(web.stop())


def test_token_protects_metrics_and_pages(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, web = start(token_file=token_file(tmp_path))
    assert request(web.port, "GET", "/metrics").status == 401
    assert request(web.port, "GET", "/metrics", headers={"Authorization": "Bearer wrong-token-xxxxxxxx"}).status == 401
    assert request(web.port, "GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
    page = request(web.port, "GET", "/quarantine")
    assert page.status == 303 and page.getheader("Location") == "/login"
    assert request(web.port, "POST", "/login", form={"token": "nope"}).status == 401
    login = request(web.port, "POST", "/login", form={"token": TOKEN})
    assert login.status == 303
    cookie = login.getheader("Set-Cookie", "")
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and TOKEN not in cookie
    session = {"Cookie": cookie.split(";", 1)[0]}
    assert request(web.port, "GET", "/quarantine", headers=session).status == 200
    # A token on loopback is honoured too; and with a token, any Host name may be used.
    assert request(web.port, "GET", "/", headers={**session, "Host": "mx.example.org"}).status == 200


def login(port: int, headers: dict[str, str] | None = None) -> dict[str, str]:
    """Log in with the token: the session cookie, as a header to send."""
    response = request(port, "POST", "/login", form={"token": TOKEN}, headers=headers)
    assert response.status == 303
    return {"Cookie": response.getheader("Set-Cookie", "").split(";", 1)[0]}


def page_csrf(port: int, path: str, headers: dict[str, str]) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path, headers=headers)
    html = connection.getresponse().read().decode()
    connection.close()
    return html.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def hold(gw) -> str:  # type: ignore[no-untyped-def]
    return Quarantine(gw.config.data_dir / "quarantine", gw.store).hold(
        b"Subject: x\r\n\r\nx\r\n", "a@b.example", ["u@example.org"], "test").id


def test_state_changes_need_the_csrf_token(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw, web = start(token_file=token_file(tmp_path))
    item = hold(gw)
    session = login(web.port)
    assert request(web.port, "POST", f"/quarantine/{item}/delete", form={}, headers=session).status == 403
    assert request(web.port, "POST", f"/quarantine/{item}/delete", form={"csrf": "0" * 64}, headers=session).status == 403
    assert gw.store.quarantine_get(item) is not None
    csrf = page_csrf(web.port, "/quarantine", session)
    # Posted from another site: the browser names it in Origin, and we refuse.
    evil = {**session, "Origin": "http://evil.example"}
    assert request(web.port, "POST", f"/quarantine/{item}/delete", form={"csrf": csrf}, headers=evil).status == 403
    done = request(web.port, "POST", f"/quarantine/{item}/delete", form={"csrf": csrf}, headers=session)
    assert done.status == 303 and gw.store.quarantine_get(item) is None
    # A script with the bearer token needs no CSRF token: no browser sends that header by itself.
    other = hold(gw)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert request(web.port, "POST", f"/quarantine/{other}/delete", form={}, headers=bearer).status == 303
    assert gw.store.quarantine_get(other) is None


def test_without_a_token_the_dashboard_is_read_only(gateway, make_config) -> None:  # type: ignore[no-untyped-def]
    """Any local user may open a loopback dashboard; letting mail out must need more than that."""
    config = make_config(receive={"domains": ["example.org"]}, http={"listen": "127.0.0.1:0"})
    gw = gateway(config)
    setup = web_service.prepare(config)
    assert setup is not None
    web = gw.call(web_service.start(config, gw.gateway, gw.store, setup))
    try:
        item = hold(gw)
        connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
        connection.request("GET", f"/quarantine/{item}")
        page = connection.getresponse().read().decode()
        assert "Release" not in page and 'name="csrf"' not in page and "Read-only" in page
        # Even with a CSRF token made by the listener's own secret, a change is refused.
        csrf = setup.guard.csrf_token(Request("POST", "/", {}, {}))
        for action in ("delete", "release"):
            refused = request(web.port, "POST", f"/quarantine/{item}/{action}", form={"csrf": csrf})
            assert refused.status == 403
        assert gw.store.quarantine_get(item) is not None
    finally:
        gw.call(web.stop())


def test_logout_ends_the_session_and_each_login_gets_a_new_one(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw, web = start(token_file=token_file(tmp_path))
    first = login(web.port)
    second = login(web.port)
    assert first != second  # never the same cookie twice
    assert request(web.port, "GET", "/", headers=first).status == 200
    csrf = page_csrf(web.port, "/", first)
    assert request(web.port, "POST", "/logout", form={"csrf": csrf}, headers=first).status == 303
    # The copied cookie is worthless after logout; the other login is untouched.
    gone = request(web.port, "GET", "/quarantine", headers=first)
    assert gone.status == 303 and gone.getheader("Location") == "/login"
    assert request(web.port, "GET", "/metrics", headers=first).status == 401
    assert request(web.port, "GET", "/quarantine", headers=second).status == 200
    # Session fixation: a cookie the browser had before logging in is replaced, and ended.
    third = login(web.port, headers=second)
    assert third != second
    assert request(web.port, "GET", "/quarantine", headers=second).status == 303
    assert request(web.port, "GET", "/quarantine", headers=third).status == 200
    # A made-up cookie value is no session.
    forged = {"Cookie": f"{COOKIE}=" + "A" * 43}
    assert request(web.port, "GET", "/quarantine", headers=forged).status == 303


def test_without_token_only_loopback_host_names_are_answered(start) -> None:  # type: ignore[no-untyped-def]
    _, web = start()
    assert request(web.port, "GET", "/metrics").status == 200
    assert request(web.port, "GET", "/", headers={"Host": f"localhost:{web.port}"}).status == 200
    # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1.
    assert request(web.port, "GET", "/", headers={"Host": f"evil.example:{web.port}"}).status == 421


def test_bad_requests_get_4xx(start) -> None:  # type: ignore[no-untyped-def]
    _, web = start()
    assert request(web.port, "GET", "/nothing-here").status == 404
    assert request(web.port, "DELETE", "/").status == 405
    assert request(web.port, "HEAD", "/metrics").status == 200
    assert request(web.port, "POST", "/quarantine/x/release", headers={"Transfer-Encoding": "chunked"}).status == 411


def test_listener_off_and_config_rules(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert web_service.prepare(make_config(http={"listen": ""})) is None
    with pytest.raises(ConfigError, match="not loopback"):
        make_config(http={"listen": "0.0.0.0:8025"})
    make_config(http={"listen": "0.0.0.0:8025", "token_file": token_file(tmp_path)})  # fine with a token
    with pytest.raises(ConfigError, match="chmod 600"):
        web_service.prepare(make_config(http={"listen": "127.0.0.1:0", "token_file": token_file(tmp_path, 0o644)}))
    config = load_config(build_parser().parse_args(["serve", "--http-listen", ""]))
    assert config.http.listen == ""
    assert load_config(build_parser().parse_args(["serve"])).http.listen == "127.0.0.1:8025"
