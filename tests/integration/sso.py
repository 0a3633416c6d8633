"""A browser's SSO login on the internal gateway, by hand (no cookie jar):
the helpers test_oidc.py and test_internal_gateway.py share. Each step
returns exactly what the gateway or the provider answered, so tests can
stop anywhere in the flow (docs/filters/oidc.md)."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin

import requests

from helpers import CA, TIMEOUT

INTERNAL = {1: "https://localhost:10444", 2: "https://localhost:10544"}
PROVIDER = "http://localhost:18084"
SESSION = "__Host-gw-session"
LOGIN = "__Host-gw-login"
HTML = {"accept": "text/html,application/xhtml+xml", "connection": "close"}


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.action = a.get("action")
        elif tag == "input" and a.get("type") == "hidden" and a.get("name"):
            self.fields[a["name"]] = a.get("value") or ""


def set_cookies(resp: requests.Response) -> dict[str, str]:
    """name -> the whole Set-Cookie line."""
    lines = resp.raw.headers.getlist("set-cookie") if hasattr(resp.raw.headers, "getlist") else []
    return {line.split("=", 1)[0]: line for line in lines}


def cookie_pair(line: str) -> str:
    return line.split(";", 1)[0]


def get(replica: int, path: str, cookie: str | None = None, headers: dict | None = None) -> requests.Response:
    h = dict(HTML)
    if cookie:
        h["cookie"] = cookie
    h.update(headers or {})
    return requests.get(INTERNAL[replica] + path, headers=h, verify=str(CA), allow_redirects=False,
                        timeout=TIMEOUT)


def start_login(replica: int = 1, path: str = "/tools/dash?x=1", cookie: str | None = None) -> tuple[str, str]:
    """The gateway's 302 to the provider: (authorize URL, pre-login cookie pair)."""
    r = get(replica, path, cookie=cookie)
    assert r.status_code == 302, (r.status_code, r.text)
    loc = r.headers["location"]
    assert loc.startswith(PROVIDER + "/authorize?"), loc
    line = set_cookies(r)[LOGIN]
    return loc, cookie_pair(line)


def provider_login(authorize: str, user: str, password: str | None = None) -> str:
    """Fills the provider's form like a browser: the callback URL it redirects to."""
    page = requests.get(authorize, timeout=TIMEOUT)
    assert page.status_code == 200 and "<form" in page.text, page.text[:300]
    form = _Form()
    form.feed(page.text)
    data = dict(form.fields, username=user, password=password or f"{user}-password")
    r = requests.post(urljoin(authorize, form.action or "/authorize"), data=data, allow_redirects=False,
                      timeout=TIMEOUT)
    assert r.status_code == 302, (r.status_code, r.text[:300])
    return r.headers["location"]


def finish_login(callback: str, login_cookie: str) -> requests.Response:
    return requests.get(callback, headers={**HTML, "cookie": login_cookie}, verify=str(CA),
                        allow_redirects=False, timeout=TIMEOUT)


def login(user: str = "alice", replica: int = 1, path: str = "/tools/dash?x=1") -> str:
    """A whole login; the session cookie pair."""
    authorize, login_cookie = start_login(replica, path)
    callback = provider_login(authorize, user)
    r = finish_login(callback, login_cookie)
    assert r.status_code == 302, (r.status_code, r.text)
    return cookie_pair(set_cookies(r)[SESSION])


