"""Who may use the console, and protection of its actions.

With ``CONSOLE_TOKEN`` set, every request must carry it: ``Authorization: Bearer TOKEN``, or the
cookie the login form sets (a keyed hash of the token, never the token itself). With
``CONSOLE_BASIC_AUTH=user:password``, HTTP basic authentication. With neither, the console
is open, and ``server.serve`` refuses to listen anywhere but the loopback address.

Every action is a POST carrying the session's CSRF token (a hidden form field, checked against
the signed session cookie).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets

from flask import abort, redirect, request, session, url_for

COOKIE = "roastq_console"
OPEN_PATHS = ("/login", "/static/console.css")


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"roastq-console-login", hashlib.sha256).hexdigest()


def _basic_user(expected: str) -> str | None:
    """The user name when the request's basic-auth credentials are ``expected`` (user:password)."""
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        given = base64.b64decode(header[6:].strip()).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return given.split(":", 1)[0] if hmac.compare_digest(given.encode(), expected.encode()) else None


def authenticate(settings) -> str | None:
    """The name of who is asking (for the action log), or None when the request is refused."""
    if settings.console_basic_auth:
        user = _basic_user(settings.console_basic_auth)
        if user is not None:
            return user
    if settings.console_token:
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer ") and hmac.compare_digest(
            header[7:].strip().encode(), settings.console_token.encode()
        ):
            return "token"
        cookie = request.cookies.get(COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), token_cookie_value(settings.console_token).encode()):
            return "token"
    if not settings.console_basic_auth and not settings.console_token:
        return "local"
    return None


def refuse(settings):
    """The answer to a request without valid credentials."""
    if settings.console_basic_auth and not settings.console_token:
        return ("authentication required\n", 401, {"WWW-Authenticate": 'Basic realm="roastq console"'})
    if request.method == "GET" and not request.headers.get("X-Console-Partial"):
        return redirect(url_for("login", next=request.full_path if request.query_string else request.path))
    return ("authentication required: send the console token\n", 401, {"WWW-Authenticate": "Bearer"})


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def check_csrf() -> None:
    sent = request.form.get("csrf", "")
    if not sent or not hmac.compare_digest(sent.encode(), session.get("csrf", "").encode()):
        abort(400, "missing or wrong CSRF token: reload the page and try again")
