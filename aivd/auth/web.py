"""Who may use aivd's HTTP services, as FastAPI dependencies: API keys (`Authorization: Bearer KEY`) for programs,
and for people signed-in sessions with a cookie and CSRF tokens on forms.

    access = Access.from_db(url)
    refuse_open_bind(host, access, insecure)           # before serving: a one-line AivdError for an open public bind
    app.include_router(login_router(access))           # GET/POST /login, POST /logout
    @app.get("/api/x")                                 # 401 without a valid key or session
    def x(who: Principal = Depends(access.require("viewer"))): ...
    @app.post("/promote", dependencies=[Depends(access.csrf)])
    def promote(who: Principal = Depends(access.require("admin", page=True))): ...   # redirects to /login

A database with no active key and no enabled user is an open service: everyone is Principal("local", "admin").
`refuse_open_bind` allows that only on a loopback address or with --insecure. Once anything is configured the
service stays closed for the life of the process, even if every key is then revoked and every user disabled, so
that locking everyone out never opens the service.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, FileSystemLoader

from aivd.auth.audit import AuditLog
from aivd.auth.keys import ROLES, ApiKeys, CachedVerifier, role_allows
from aivd.auth.limits import LoginLimiter
from aivd.auth.sessions import Session, Sessions
from aivd.auth.users import USERNAME, Users
from aivd.core.errors import AivdError

SESSION_COOKIE = "aivd_session"
LOGIN_CSRF_COOKIE = "aivd_login_csrf"  # the sign-in form's own CSRF token, before there is a session
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
KeyCheck = Callable[[str], "str | None"]  # a key's role, or None for an invalid key (aivd.auth.keys.CachedVerifier)
TEMPLATES = Path(__file__).parent / "templates"
OPEN_RECHECK_S = 1.0  # how long "nothing is configured" is believed before the database is asked again


class AccessError(AivdError, RuntimeError):
    """A service that may not start as asked: a public address with nobody configured."""


@dataclass(frozen=True)
class Principal:
    """Who is asking: a username, `key:<key id>`, or `local` on an open service; how (session, key or local); and
    for a session the CSRF token its forms must carry."""

    name: str
    role: str
    via: str
    csrf_token: str | None = None


LOCAL = Principal("local", "admin", "local")


class Access:
    """The checks of one service. `check` verifies API keys; with `users` and `sessions` people may also sign in
    (a console), without them only keys are accepted (the cloud service, the Ray ingress). `keys` and `users` are
    counted by `configured`; without either, a service given only `check` always needs a key."""

    def __init__(self, check: KeyCheck, *, keys: ApiKeys | None = None, users: Users | None = None, sessions: Sessions | None = None,
                 audit: AuditLog | None = None, limiter: LoginLimiter | None = None) -> None:
        if (users is None) != (sessions is None):
            raise ValueError("users and sessions go together")
        self.check = check
        self.keys = keys
        self.users = users
        self.sessions = sessions
        self.audit = audit
        self.limiter = limiter or LoginLimiter()
        self.bearer = HTTPBearer(auto_error=False, description="an API key from `aivd keys create`")
        self._configured = keys is None and users is None
        self._open_checked_at = -float("inf")
        self._open_lock = threading.Lock()

    @classmethod
    def from_db(cls, url: str, *, people: bool = True, session_ttl_s: float = 8 * 3600, key_ttl_s: float = 60.0) -> Access:
        """The keys, users, sessions and audit log in the result database at `url`. Verified keys are remembered
        for `key_ttl_s` (argon2 costs tens of milliseconds a check), so a revoked key lasts that long in a running
        service. `people=False`: keys only, for services without a sign-in page."""
        with ExitStack() as opened:  # what was opened is closed again if a later part fails
            keys = opened.enter_context(ApiKeys(url))
            audit = opened.enter_context(AuditLog(url))
            users = opened.enter_context(Users(url)) if people else None
            sessions = opened.enter_context(Sessions(url, session_ttl_s)) if people else None
            opened.pop_all()
        return cls(CachedVerifier(keys, key_ttl_s), keys=keys, users=users, sessions=sessions, audit=audit)

    def __enter__(self) -> Access:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for part in (self.keys, self.users, self.sessions, self.audit):
            if part is not None:
                part.close()

    def configured(self) -> bool:
        """Whether any key is active or (with people) any user enabled. Once true it stays true; false is
        believed for OPEN_RECHECK_S, so an open service does not count rows on every request."""
        if self._configured:
            return True
        with self._open_lock:
            if time.monotonic() - self._open_checked_at < OPEN_RECHECK_S:
                return False
            counts = [part.active() for part in (self.keys, self.users) if part is not None]
            self._configured = any(counts)
            self._open_checked_at = time.monotonic()
            return self._configured

    def where(self) -> str:
        """What would make this service configured, for messages."""
        url = next(part.url for part in (self.keys, self.users) if part is not None)
        if self.users is None:
            return f"{url} has no active key (`aivd keys create`)"
        return f"{url} has no active key or enabled user (`aivd keys create`, `aivd users create`)"

    # --- who is asking ----------------------------------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        """The live session of the request's cookie, looked up once per request."""
        if self.sessions is None:
            return None
        if not hasattr(request.state, "aivd_session"):
            token = request.cookies.get(SESSION_COOKIE)
            request.state.aivd_session = self.sessions.resolve(token) if token else None
        return request.state.aivd_session

    def identify(self, request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal | None:
        """Who sent the request, or None for nobody valid. A bearer key, when sent, decides alone."""
        if not self.configured():
            return LOCAL
        if credentials is not None:
            role = self.check(credentials.credentials)
            # A valid key has aivd's format: its id is the part between the first two underscores.
            return Principal(f"key:{credentials.credentials.split('_', 2)[1]}", role, "key") if role else None
        found = self.session(request)
        if found is None:
            return None
        return Principal(found.user.username, found.user.role, "session", found.csrf_token)

    def require(self, role: str, page: bool = False) -> Callable[..., Principal]:
        """A dependency admitting requests with a key or session of at least `role` and returning who sent them
        (see `admit`). A plain def: FastAPI runs it in a worker thread, since it reads the database and may run
        argon2."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")

        def dependency(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(self.bearer)) -> Principal:
            return self.admit(request, credentials, role, page)

        return dependency

    def admit(self, request: Request, credentials: HTTPAuthorizationCredentials | None, role: str, page: bool = False) -> Principal:
        """Who sent the request, if they may do what needs `role`; else HTTPException: 401 (or with `page`, a
        redirect to the sign-in page), 403 for a role too low, 503 when the database cannot be read. Neither keys
        nor cookies are ever put in an answer or a log line."""
        try:
            principal = self.identify(request, credentials)
        except AivdError as error:  # the database is unreachable: a passing outage, not the client's fault
            raise HTTPException(503, f"cannot check who is asking now: {error}") from None
        if principal is None:
            if page and credentials is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                login = request.scope.get("root_path", "") + "/login?next=" + quote(target, safe="")
                raise HTTPException(303, "sign in first", headers={"Location": login})
            sign_in = " or sign in" if self.sessions is not None else ""
            raise HTTPException(401, f"a valid API key is needed: send `Authorization: Bearer KEY`{sign_in}",
                                headers={"WWW-Authenticate": "Bearer"})
        if not role_allows(principal.role, role):
            raise HTTPException(403, f"{principal.name}'s role ({principal.role}) may not do this; it needs {role}")
        return principal

    async def csrf(self, request: Request) -> None:
        """A dependency for unsafe methods: a request carrying the session cookie must also carry the session's
        CSRF token, as the form field `csrf_token` or the header `X-CSRF-Token` (403 otherwise). Requests with a
        bearer key need none: a browser never adds that header to another site's request. A browser request from
        another origin is refused even on an open service, where there is no session to hold a token."""
        if request.method in SAFE_METHODS or request.headers.get("authorization", "").lower().startswith("bearer "):
            return
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            raise HTTPException(403, "a request from another site is refused (its Origin is not this service)")
        if self.sessions is None or request.cookies.get(SESSION_COOKIE) is None:
            return
        try:
            found = await run_in_threadpool(self.session, request)
        except AivdError as error:
            raise HTTPException(503, f"cannot check the session now: {error}") from None
        if found is None:
            return  # no live session: `require` answers 401 or sends the browser to sign in
        if not hmac.compare_digest(await _csrf_token_sent(request), found.csrf_token):
            raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page and try again")


async def _csrf_token_sent(request: Request) -> str:
    """The CSRF token in the header, else in the form body ('' when there is none)."""
    header = request.headers.get("x-csrf-token")
    if header:
        return header
    if request.headers.get("content-type", "").split(";")[0].strip() in ("application/x-www-form-urlencoded", "multipart/form-data"):
        await request.body()  # kept by the request, so the route can still read the body after the form parser
        value = (await request.form()).get("csrf_token")
        return value if isinstance(value, str) else ""
    return ""


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def refuse_open_bind(host: str, access: Access | None, insecure: bool) -> None:
    """AccessError when a service would listen on a non-loopback `host` with nobody configured to be let in (no
    `access`, or nothing configured in it), unless `insecure`."""
    if insecure or is_loopback(host):
        return
    if access is None or not access.configured():
        where = "no --db" if access is None else access.where()
        raise AccessError(f"refusing to serve {host} open to everyone ({where}); --insecure serves it open")


def _safe_next(target: str) -> str:
    """A path on this site to go to after signing in; anything else (another site, a scheme) becomes /."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target or any(ord(c) < 32 for c in target):
        return "/"
    return target


def login_router(access: Access, templates: Jinja2Templates | None = None) -> APIRouter:
    """GET and POST /login, POST /logout. With the console's `templates`, the sign-in page extends its
    `base.html` (block `content`, title in block `title`); otherwise it is a small page of its own. Sign-ins are
    rate-limited per username and client address (aivd.auth.limits) and audited; the session cookie is HttpOnly,
    SameSite=Strict, and Secure when the request came over HTTPS."""
    if access.users is None or access.sessions is None:
        raise ValueError("a sign-in page needs an Access with users and sessions (Access.from_db(url))")
    users, sessions, limiter = access.users, access.sessions, access.limiter
    if templates is None:
        pages, page = Jinja2Templates(directory=TEMPLATES), "auth/login_page.html"
    else:  # the console's environment, its globals and filters, with these templates beside its own
        pages = Jinja2Templates(env=templates.env.overlay(loader=ChoiceLoader([templates.env.loader, FileSystemLoader(TEMPLATES)])))
        page = "auth/login_console.html"
    router = APIRouter(tags=["sign-in"])

    def audit(actor: str, action: str, request: Request, target: str | None = None, detail: dict | None = None) -> None:
        if access.audit is not None:
            access.audit.record(actor, action, target, detail, request.client.host if request.client else None)

    def form(request: Request, status: int = 200, error: str | None = None, username: str = "", next_: str = "/",
             headers: dict[str, str] | None = None) -> HTMLResponse:
        token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
        response = pages.TemplateResponse(request, page, {
            "csrf_token": token, "error": error, "username": username, "next": _safe_next(next_), "principal": None},
            status_code=status, headers=headers)
        response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                            path=request.scope.get("root_path", "") + "/login")
        return response

    @router.get("/login", response_class=HTMLResponse, summary="The sign-in page")
    def login_page(request: Request, next: str = "/") -> HTMLResponse:
        return form(request, next_=next)

    @router.post("/login", response_class=HTMLResponse, summary="Sign in: a session cookie and a redirect to `next`",
                 responses={303: {"description": "signed in"}, 401: {"description": "wrong username or password"},
                            403: {"description": "no or a stale CSRF token"}, 429: {"description": "too many failures; see Retry-After"}})
    def login(request: Request, username: str = Form("", max_length=256), password: str = Form("", max_length=1024),
              csrf_token: str = Form("", max_length=256), next: str = Form("/", max_length=2048)) -> Response:
        expected = request.cookies.get(LOGIN_CSRF_COOKIE)
        if not expected or not hmac.compare_digest(csrf_token, expected):
            return form(request, 403, "The sign-in form was stale: please try again.", username, next)
        address = request.client.host if request.client else "unknown"
        wait = limiter.retry_after(username, address)
        if wait is not None:
            retry = str(int(wait) + 1)
            return form(request, 429, f"Too many failed sign-ins: try again in {retry} s.", username, next, {"Retry-After": retry})
        try:
            user = users.authenticate(username, password)
            if user is None:
                # Only a possible username is recorded: people type their password into the wrong field.
                who = username if USERNAME.fullmatch(username) else "(not a username)"
                audit(who, "login_failed", request, who)
                if limiter.failed(username, address):
                    audit(who, "login_locked", request, who, {"lockout_s": limiter.lockout_s})
                return form(request, 401, "Wrong username or password.", username, next)
            limiter.succeeded(username, address)
            token, _ = sessions.start(user)
            audit(user.username, "login", request, user.username)
        except AivdError as error:
            return form(request, 503, f"Cannot sign in now: {error}", username, next)
        response = RedirectResponse(_safe_next(next), status_code=303)
        response.set_cookie(SESSION_COOKIE, token, max_age=int(sessions.ttl_s), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path=request.scope.get("root_path", "") or "/")
        response.delete_cookie(LOGIN_CSRF_COOKIE, path=request.scope.get("root_path", "") + "/login")
        return response

    @router.post("/logout", summary="Sign out: the session ends on the server", dependencies=[Depends(access.csrf)],
                 responses={303: {"description": "signed out"}, 403: {"description": "no or a stale CSRF token"}})
    def logout(request: Request) -> Response:
        token = request.cookies.get(SESSION_COOKIE)
        try:
            found = access.session(request)
            if token is not None and found is not None:
                sessions.end(token)
                audit(found.user.username, "logout", request, found.user.username)
        except AivdError as error:
            raise HTTPException(503, f"cannot sign out now: {error}") from None
        response = RedirectResponse(request.scope.get("root_path", "") + "/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=request.scope.get("root_path", "") or "/")
        return response

    return router
