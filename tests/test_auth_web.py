"""aivd.auth.web on a real uvicorn server, driven with httpx as a browser and a program would: API keys and
sessions, 401/403/redirects, CSRF on every form (the sign-in form too), cookie flags, the sign-in rate limit,
server-side sign-out, and the audit rows all of it writes."""

import re
import ssl
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from conftest import serving
from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import create_engine, update

from aivd.auth.keys import ApiKeys
from aivd.auth.users import Users
from aivd.auth.web import LOGIN_CSRF_COOKIE, SESSION_COOKIE, Access, AccessError, Principal, login_router, refuse_open_bind
from aivd.serving.server import ServerSettings
from aivd.store.database import sessions as sessions_table

pytestmark = pytest.mark.integration  # a real server per test
PASSWORD = "correct horse battery"


def make_app(access: Access, templates: Jinja2Templates | None = None) -> FastAPI:
    app = FastAPI()
    app.include_router(login_router(access, templates))

    @app.get("/api/whoami")
    def whoami(who: Principal = Depends(access.require("viewer"))):
        return {"name": who.name, "role": who.role, "via": who.via}

    @app.get("/review", response_class=HTMLResponse)
    def review(who: Principal = Depends(access.require("operator", page=True))):
        return f"<p>hello {who.name}</p>"

    @app.post("/api/promote", dependencies=[Depends(access.csrf)])
    def promote(who: Principal = Depends(access.require("admin"))):
        access.audit.record(who.name, "promote", "edge v2")
        return {"promoted": True}

    return app


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'aivd.sqlite'}"
    with Users(url) as users:
        users.create("ada", PASSWORD, "admin")
        users.create("otto", PASSWORD, "operator")
    return url


@pytest.fixture
def site(url):
    access = Access.from_db(url)
    with serving(make_app(access)) as base:
        yield base, access
    access.close()


def browser(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, follow_redirects=False, timeout=30)


def csrf_field(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client: httpx.Client, username: str, password: str = PASSWORD, next_: str = "/") -> httpx.Response:
    page = client.get("/login", params={"next": next_})
    return client.post("/login", data={"username": username, "password": password, "csrf_token": csrf_field(page.text), "next": next_})


def test_nothing_is_open_to_anyone_without_a_key_or_a_session(site):
    base, _ = site
    with browser(base) as client:
        answer = client.get("/api/whoami")
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert client.get("/api/whoami", headers={"authorization": "Bearer aivd_123456789abc_wrong"}).status_code == 401
        page = client.get("/review", params={"x": "1"})
        assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Freview%3Fx%3D1"
        assert client.post("/api/promote").status_code == 401


def test_keys_are_admitted_by_role_and_need_no_csrf_token(site, url):
    base, access = site
    with ApiKeys(url) as keys:
        viewer, admin = keys.create("viewer"), keys.create("admin")
    with browser(base) as client:
        me = client.get("/api/whoami", headers={"authorization": f"Bearer {viewer}"})
        assert me.json() == {"name": f"key:{viewer.split('_')[1]}", "role": "viewer", "via": "key"}
        refused = client.post("/api/promote", headers={"authorization": f"Bearer {viewer}"})
        assert refused.status_code == 403 and "viewer" in refused.json()["detail"] and viewer not in refused.text
        assert client.post("/api/promote", headers={"authorization": f"Bearer {admin}"}).json() == {"promoted": True}
    assert access.audit.entries()[0].actor == f"key:{admin.split('_')[1]}"


def test_signing_in_sets_a_strict_http_only_cookie_and_goes_to_next(site):
    base, access = site
    with browser(base) as client:
        page = client.get("/login")
        login_cookie = page.headers["set-cookie"]
        assert LOGIN_CSRF_COOKIE in login_cookie and "HttpOnly" in login_cookie and "SameSite=strict" in login_cookie
        signed_in = sign_in(client, "otto", next_="/review?x=1")
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/review?x=1"
        cookie = next(value for value in signed_in.headers.get_list("set-cookie") if value.startswith(SESSION_COOKIE))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie and "Secure" not in cookie
        assert client.get("/review", params={"x": "1"}).text == "<p>hello otto</p>"
        assert client.get("/api/whoami").json() == {"name": "otto", "role": "operator", "via": "session"}
        refused = client.post("/api/promote", headers={"x-csrf-token": session_csrf(access, client)})
        assert refused.status_code == 403 and "otto's role (operator)" in refused.json()["detail"]
    [login] = access.audit.entries(action="login")
    assert (login.actor, login.target, login.remote_addr) == ("otto", "otto", "127.0.0.1")


def test_next_never_leads_to_another_site(site):
    base, _ = site
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "review"):
        with browser(base) as client:
            assert sign_in(client, "ada", next_=target).headers["location"] == "/"


def test_forms_need_the_session_csrf_token_and_another_origin_is_refused(site):
    base, access = site
    with browser(base) as client:
        sign_in(client, "ada")
        token = csrf_field(client.get("/login").text)  # the sign-in form's token is not the session's
        for sent in ({}, {"data": {"csrf_token": "forged"}}, {"headers": {"x-csrf-token": token}}):
            refused = client.post("/api/promote", **sent)
            assert refused.status_code == 403 and "CSRF" in refused.json()["detail"], sent
        token = session_csrf(access, client)
        assert client.post("/api/promote", headers={"x-csrf-token": token}).json() == {"promoted": True}
        assert client.post("/api/promote", data={"csrf_token": token}).json() == {"promoted": True}
        foreign = client.post("/api/promote", headers={"x-csrf-token": token, "origin": "https://evil.example"})
        assert foreign.status_code == 403 and "another site" in foreign.json()["detail"]


def session_csrf(access: Access, client: httpx.Client) -> str:
    """The session's CSRF token, which a console page embeds in its forms."""
    return access.sessions.resolve(client.cookies[SESSION_COOKIE]).csrf_token


def test_the_sign_in_form_itself_needs_its_csrf_token(site):
    base, access = site
    with browser(base) as client:
        no_cookie = client.post("/login", data={"username": "ada", "password": PASSWORD, "csrf_token": "x"})
        assert no_cookie.status_code == 403 and SESSION_COOKIE not in no_cookie.headers.get("set-cookie", "")
        client.get("/login")
        forged = client.post("/login", data={"username": "ada", "password": PASSWORD, "csrf_token": "forged"})
        assert forged.status_code == 403 and SESSION_COOKIE not in client.cookies
    assert access.audit.entries(action="login") == []


def test_signing_out_ends_the_session_on_the_server(site):
    base, access = site
    with browser(base) as client:
        sign_in(client, "ada")
        token = client.cookies[SESSION_COOKIE]
        assert client.post("/logout").status_code == 403  # signing out is a form too
        out = client.post("/logout", data={"csrf_token": session_csrf(access, client)})
        assert out.status_code == 303 and out.headers["location"] == "/login"
    with browser(base) as replay:  # the old cookie, kept by someone who copied it
        replay.cookies.set(SESSION_COOKIE, token)
        assert replay.get("/api/whoami").status_code == 401
    assert [entry.action for entry in access.audit.entries()] == ["logout", "login"]


def test_a_disabled_users_session_and_an_expired_session_are_refused(site, url):
    base, _ = site
    with browser(base) as ada, browser(base) as otto:
        sign_in(ada, "ada")
        sign_in(otto, "otto")
        assert ada.get("/api/whoami").status_code == 200 and otto.get("/api/whoami").status_code == 200
        with Users(url) as users:
            users.disable("otto")
        assert otto.get("/api/whoami").status_code == 401
        assert sign_in(otto, "otto").status_code == 401
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(update(sessions_table).values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
        engine.dispose()
        assert ada.get("/api/whoami").status_code == 401
        assert ada.get("/review").headers["location"] == "/login?next=%2Freview"


def test_five_failures_lock_the_name_from_that_address_with_retry_after(site):
    base, access = site
    with browser(base) as client:
        for _ in range(5):
            failed = sign_in(client, "ada", "wrong password!!")
            assert failed.status_code == 401 and "Wrong username or password" in failed.text
        locked = sign_in(client, "ada")  # the right password, too late
        assert locked.status_code == 429 and 290 <= int(locked.headers["retry-after"]) <= 301
        assert SESSION_COOKIE not in client.cookies
        assert sign_in(client, "otto").status_code == 303  # only that name is locked
    assert len(access.audit.entries(action="login_failed")) == 5
    [locked_entry] = access.audit.entries(action="login_locked")
    assert locked_entry.actor == "ada" and locked_entry.detail == {"lockout_s": 300.0}
    assert not any(PASSWORD in str(entry) or "wrong password" in str(entry) for entry in access.audit.entries())


def test_a_password_typed_as_the_username_is_not_audited(site):
    base, access = site
    with browser(base) as client:
        sign_in(client, "correct horse battery", PASSWORD)
    [failed] = access.audit.entries(action="login_failed")
    assert failed.actor == "(not a username)" and failed.target == "(not a username)"


def test_an_open_service_on_loopback_lets_everyone_in_as_local_admin(tmp_path):
    access = Access.from_db(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    assert not access.configured()
    with serving(make_app(access)) as base, browser(base) as client:
        assert client.get("/api/whoami").json() == {"name": "local", "role": "admin", "via": "local"}
        assert client.post("/api/promote").json() == {"promoted": True}
        assert client.post("/api/promote", headers={"origin": "http://evil.example"}).status_code == 403
    access.close()


def test_configured_stays_true_once_seen_so_revoking_everything_never_opens_the_service(tmp_path):
    url = f"sqlite:///{tmp_path / 'aivd.sqlite'}"
    access = Access.from_db(url)
    with ApiKeys(url) as keys:
        key = keys.create("viewer")
        access._open_checked_at = float("-inf")  # as if a second had passed
        assert access.configured()
        keys.revoke(key.split("_")[1])
    assert access.configured()
    access.close()


def test_refuse_open_bind_refuses_a_public_address_with_nobody_configured(tmp_path, url):
    empty = Access.from_db(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    for host in ("127.0.0.1", "::1", "localhost"):
        refuse_open_bind(host, empty, insecure=False)
        refuse_open_bind(host, None, insecure=False)
    refuse_open_bind("0.0.0.0", empty, insecure=True)
    for access, where in ((None, "no --db"), (empty, "has no active key or enabled user")):
        with pytest.raises(AccessError, match="--insecure") as raised:
            refuse_open_bind("0.0.0.0", access, insecure=False)
        assert where in str(raised.value) and "\n" not in str(raised.value)
    keys_only = Access.from_db(f"sqlite:///{tmp_path / 'empty.sqlite'}", people=False)
    with pytest.raises(AccessError, match="has no active key \\(`aivd keys create`\\)"):
        refuse_open_bind("inspect.example", keys_only, insecure=False)
    configured = Access.from_db(url)
    refuse_open_bind("0.0.0.0", configured, insecure=False)
    for access in (empty, keys_only, configured):
        access.close()


def test_under_tls_the_session_cookie_is_secure(certificate, url):
    cert, key = certificate
    access = Access.from_db(url)
    with serving(make_app(access), ServerSettings(tls_cert=cert, tls_key=key)) as base:
        with httpx.Client(base_url=base, verify=ssl.create_default_context(cafile=str(cert)), timeout=30) as client:
            signed_in = sign_in(client, "ada")
            assert "Secure" in signed_in.headers["set-cookie"] and client.get("/api/whoami").json()["name"] == "ada"
    access.close()


def test_the_sign_in_page_extends_the_consoles_base_template(tmp_path, url):
    (tmp_path / "base.html").write_text("<title>{% block title %}{% endblock %} - console</title><nav>{{ brand }}</nav>"
                                        "<main>{% block content %}{% endblock %}</main>")
    templates = Jinja2Templates(directory=tmp_path)
    templates.env.globals["brand"] = "aivd console"
    access = Access.from_db(url)
    with serving(make_app(access, templates)) as base, browser(base) as client:
        page = client.get("/login").text
        assert "<title>Sign in - console</title><nav>aivd console</nav>" in page and 'name="csrf_token"' in page
        assert sign_in(client, "ada").status_code == 303
    access.close()
