"""The demo OIDC provider (demo-services, 18084) on the wire: discovery, the
authorization code flow with PKCE driven like a browser and a relying party
would (login form → code → token with client_secret_basic), the ID token
verified with PyJWT against the provider's JWKS, and its refusals.

The gateway side of SSO (10444) is tested elsewhere; this file pins the
provider that it talks to.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from html.parser import HTMLParser
from urllib.parse import parse_qs, quote_plus, urljoin, urlsplit

import jwt
import pytest
import requests
import yaml

from helpers import KEYS, REPO, SERVICES, TIMEOUT, service_url

pytestmark = pytest.mark.usefixtures("stack")

ISSUER = "http://localhost:18084"
CLIENT_ID = "internal-gateway"
CALLBACK = "https://localhost:10444/oauth2/callback"
SECRET = (KEYS / "oidc-client-secret").read_text(encoding="utf-8").strip()


def url(path: str) -> str:
    return service_url("oidc", path)


def stats() -> dict:
    resp = requests.get(url("/stats"), timeout=TIMEOUT)
    resp.raise_for_status()
    return resp.json()


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def basic(client_id: str = CLIENT_ID, secret: str = SECRET) -> tuple[str, str]:
    # RFC 6749 §2.3.1: both parts form-urlencoded before Basic's base64.
    return quote_plus(client_id), quote_plus(secret)


class FormParser(HTMLParser):
    """The login page's first form: its method, action and inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.method = self.action = None
        self.inputs: dict[str, str] = {}
        self.in_form = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and self.method is None:
            self.method, self.action, self.in_form = a.get("method"), a.get("action"), True
        elif tag == "input" and self.in_form:
            self.inputs[a["name"]] = a.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form":
            self.in_form = False


def authorize_params(challenge: str, **extra) -> dict:
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": CALLBACK,
        "scope": "openid email groups",
        "state": "state <&> " + secrets.token_urlsafe(8),
        "nonce": secrets.token_urlsafe(16),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(extra)
    return {k: v for k, v in params.items() if v is not None}


def login_form(params: dict) -> FormParser:
    resp = requests.get(url("/authorize"), params=params, allow_redirects=False, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/html")
    form = FormParser()
    form.feed(resp.text)
    return form


def sign_in(form: FormParser, username: str, password: str) -> requests.Response:
    assert form.method == "post"
    data = dict(form.inputs, username=username, password=password)
    return requests.post(urljoin(url("/authorize"), form.action), data=data, allow_redirects=False,
                         timeout=TIMEOUT)


def code_flow(user: str = "alice") -> dict:
    """Runs the browser part; answers the code, state, nonce and verifier."""
    verifier, challenge = pkce()
    params = authorize_params(challenge)
    resp = sign_in(login_form(params), user, f"{user}-password")
    assert resp.status_code == 302, resp.text
    location = resp.headers["location"]
    assert location.startswith(CALLBACK + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == [params["state"]]
    return {"code": query["code"][0], "nonce": params["nonce"], "verifier": verifier}


def redeem(code: str, verifier: str, auth=None, redirect_uri: str = CALLBACK) -> requests.Response:
    return requests.post(
        url("/token"),
        auth=auth if auth is not None else basic(),
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
              "code_verifier": verifier},
        timeout=TIMEOUT,
    )


def verify_id_token(token: str, nonce: str | None) -> dict:
    """Verifies like a relying party: the JWKS key named by kid, RS256 only."""
    jwks = requests.get(url("/jwks"), timeout=TIMEOUT).json()
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwt.PyJWKSet.from_dict(jwks).keys if k.key_id == kid)
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=CLIENT_ID, issuer=ISSUER,
                        options={"require": ["exp", "iat", "sub", "aud", "iss"]})
    if nonce is not None:
        assert claims["nonce"] == nonce
    return claims


@pytest.fixture
def controls():
    """Test controls are reset after each test that uses them."""
    yield
    requests.post(url("/_control/reset"), timeout=TIMEOUT).raise_for_status()


def test_discovery_document_names_the_endpoints_and_what_they_support():
    resp = requests.get(url("/.well-known/openid-configuration"), timeout=TIMEOUT)
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["issuer"] == ISSUER
    assert doc["authorization_endpoint"] == f"{ISSUER}/authorize"
    assert doc["token_endpoint"] == f"{ISSUER}/token"
    assert doc["jwks_uri"] == f"{ISSUER}/jwks"
    assert doc["end_session_endpoint"] == f"{ISSUER}/logout"
    assert doc["response_types_supported"] == ["code"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert doc["token_endpoint_auth_methods_supported"] == ["client_secret_basic"]
    assert doc["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert set(doc["scopes_supported"]) == {"openid", "email", "profile", "groups"}


def test_code_flow_issues_an_rs256_id_token_that_verifies_with_the_jwks():
    before = stats()
    flow = code_flow("alice")
    resp = redeem(flow["code"], flow["verifier"])
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300
    assert body["access_token"] and body["refresh_token"]
    assert body["scope"] == "openid email groups"
    assert jwt.get_unverified_header(body["id_token"]) == {"alg": "RS256", "typ": "JWT", "kid": "demo-oidc-rs256"}
    claims = verify_id_token(body["id_token"], flow["nonce"])
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@example.com" and claims["email_verified"] is True
    assert claims["groups"] == ["tools-admin"]
    assert claims["azp"] == CLIENT_ID
    assert claims["exp"] - claims["iat"] == 300
    after = stats()
    assert after["authorize_requests"] - before["authorize_requests"] == 2  # GET form, POST credentials
    assert after["logins"] - before["logins"] == 1
    assert after["token_requests"] - before["token_requests"] == 1


def test_bob_signs_in_without_groups():
    flow = code_flow("bob")
    claims = verify_id_token(redeem(flow["code"], flow["verifier"]).json()["id_token"], flow["nonce"])
    assert (claims["sub"], claims["email"], claims["groups"]) == ("bob", "bob@example.com", [])


def test_a_code_is_redeemed_once_and_its_replay_revokes_the_refresh_token():
    flow = code_flow()
    first = redeem(flow["code"], flow["verifier"])
    assert first.status_code == 200
    again = redeem(flow["code"], flow["verifier"])
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    refreshed = requests.post(url("/token"), auth=basic(), timeout=TIMEOUT,
                              data={"grant_type": "refresh_token", "refresh_token": first.json()["refresh_token"]})
    assert refreshed.status_code == 400
    assert refreshed.json()["error"] == "invalid_grant"


def test_a_wrong_client_secret_is_401_with_basic_challenge_and_counts_as_a_token_request():
    flow = code_flow()
    before = stats()["token_requests"]
    for auth in (basic(secret="wrong"), basic(client_id="someone-else"), ("", "")):
        resp = redeem(flow["code"], flow["verifier"], auth=auth)
        assert resp.status_code == 401
        assert resp.json()["error"] == "invalid_client"
        assert resp.headers["www-authenticate"].startswith("Basic")
    # No Authorization at all (client_secret_post is not supported).
    resp = requests.post(url("/token"), timeout=TIMEOUT,
                         data={"grant_type": "authorization_code", "code": flow["code"],
                               "redirect_uri": CALLBACK, "code_verifier": flow["verifier"],
                               "client_id": CLIENT_ID, "client_secret": SECRET})
    assert resp.status_code == 401
    assert stats()["token_requests"] - before == 4
    # An unauthenticated attempt does not burn the code.
    assert redeem(flow["code"], flow["verifier"]).status_code == 200


@pytest.mark.parametrize("verifier", ["x" * 43, "too-short", None])
def test_a_bad_code_verifier_is_invalid_grant(verifier):
    flow = code_flow()
    data = {"grant_type": "authorization_code", "code": flow["code"], "redirect_uri": CALLBACK}
    if verifier is not None:
        data["code_verifier"] = verifier
    resp = requests.post(url("/token"), auth=basic(), data=data, timeout=TIMEOUT)
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"


def test_the_token_requests_redirect_uri_must_be_the_codes():
    flow = code_flow()
    resp = redeem(flow["code"], flow["verifier"], redirect_uri="https://localhost:10544/oauth2/callback")
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("redirect_uri", [
    "https://evil.example/oauth2/callback",
    "https://localhost:10444/oauth2/callback/",
    "https://localhost:10444/oauth2/callback?next=https://evil.example",
])
def test_an_unregistered_redirect_uri_is_never_redirected_to(redirect_uri):
    _, challenge = pkce()
    params = authorize_params(challenge, redirect_uri=redirect_uri)
    resp = requests.get(url("/authorize"), params=params, allow_redirects=False, timeout=TIMEOUT)
    assert resp.status_code == 400
    assert "location" not in resp.headers
    assert resp.headers["content-type"].startswith("text/html")
    # Not even with correct credentials posted straight to the form's target.
    before = stats()["logins"]
    resp = requests.post(url("/authorize"), data=dict(params, username="alice", password="alice-password"),
                         allow_redirects=False, timeout=TIMEOUT)
    assert resp.status_code == 400
    assert "location" not in resp.headers
    assert stats()["logins"] == before


def test_an_unknown_client_gets_an_error_page():
    _, challenge = pkce()
    resp = requests.get(url("/authorize"), params=authorize_params(challenge, client_id="stranger"),
                        allow_redirects=False, timeout=TIMEOUT)
    assert resp.status_code == 400
    assert "location" not in resp.headers


@pytest.mark.parametrize("override, error", [
    ({"code_challenge": None}, "invalid_request"),
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"scope": "email"}, "invalid_scope"),
])
def test_other_bad_requests_go_back_to_the_client_with_error_and_state(override, error):
    _, challenge = pkce()
    params = authorize_params(challenge, **override)
    resp = requests.get(url("/authorize"), params=params, allow_redirects=False, timeout=TIMEOUT)
    assert resp.status_code == 302
    location = resp.headers["location"]
    assert location.startswith(CALLBACK + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["error"] == [error]
    assert query["state"] == [params["state"]]
    assert "code" not in query


def test_wrong_credentials_show_the_form_again_and_issue_no_code():
    _, challenge = pkce()
    params = authorize_params(challenge, state='"><script>alert(1)</script>')
    form = login_form(params)
    assert set(form.inputs) >= {"username", "password", "state", "nonce", "code_challenge", "redirect_uri"}
    assert form.inputs["state"] == params["state"]  # round-trips, escaped in the HTML
    before = stats()["logins"]
    resp = sign_in(form, "alice", "bob-password")
    assert resp.status_code == 200
    assert "location" not in resp.headers
    assert "<script>alert(1)</script>" not in resp.text
    assert "Wrong username or password" in resp.text
    assert stats()["logins"] == before


def test_refresh_rotates_the_refresh_token():
    flow = code_flow()
    first = redeem(flow["code"], flow["verifier"]).json()

    def refresh(token):
        return requests.post(url("/token"), auth=basic(), timeout=TIMEOUT,
                             data={"grant_type": "refresh_token", "refresh_token": token})

    second = refresh(first["refresh_token"])
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["refresh_token"] != first["refresh_token"]
    claims = verify_id_token(body["id_token"], None)
    assert claims["sub"] == "alice" and "nonce" not in claims
    old = refresh(first["refresh_token"])
    assert old.status_code == 400
    assert old.json()["error"] == "invalid_grant"


def test_logout_redirects_only_to_a_registered_uri_and_counts():
    before = stats()["logouts"]
    resp = requests.get(url("/logout"), allow_redirects=False, timeout=TIMEOUT,
                        params={"post_logout_redirect_uri": "https://localhost:10444/", "state": "s1",
                                "client_id": CLIENT_ID})
    assert resp.status_code == 302
    assert resp.headers["location"] == "https://localhost:10444/?state=s1"
    resp = requests.get(url("/logout"), allow_redirects=False, timeout=TIMEOUT,
                        params={"post_logout_redirect_uri": "https://evil.example/"})
    assert resp.status_code == 200
    assert "location" not in resp.headers
    assert "You are signed out" in resp.text
    assert stats()["logouts"] - before == 2


def test_jwks_is_cacheable_and_public_only():
    resp = requests.get(url("/jwks"), timeout=TIMEOUT)
    assert resp.status_code == 200
    assert "max-age=300" in resp.headers["cache-control"]
    (key,) = resp.json()["keys"]
    assert key["kid"] == "demo-oidc-rs256" and key["kty"] == "RSA" and key["alg"] == "RS256"
    assert key["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)


def test_stats_reset_zeroes_the_counters():
    requests.get(url("/logout"), timeout=TIMEOUT)
    resp = requests.post(url("/stats/reset"), timeout=TIMEOUT)
    assert resp.status_code == 200
    assert stats() == {"token_requests": 0, "authorize_requests": 0, "logins": 0, "logouts": 0}


def test_control_next_id_token_alg_none_applies_once(controls):
    resp = requests.post(url("/_control/next_id_token"), json={"alg": "none"}, timeout=TIMEOUT)
    assert resp.status_code == 200
    flow = code_flow()
    token = redeem(flow["code"], flow["verifier"]).json()["id_token"]
    assert jwt.get_unverified_header(token) == {"alg": "none"}
    assert token.endswith(".")
    flow = code_flow()
    verify_id_token(redeem(flow["code"], flow["verifier"]).json()["id_token"], flow["nonce"])
    assert requests.post(url("/_control/next_id_token"), json={"alg": "RS512"},
                         timeout=TIMEOUT).status_code == 400


def test_control_rotate_key_publishes_the_new_and_the_previous_key(controls):
    resp = requests.post(url("/_control/rotate_key"), timeout=60)
    assert resp.status_code == 200
    kid = resp.json()["kid"]
    assert kid.startswith("demo-oidc-rs256-")
    kids = [k["kid"] for k in requests.get(url("/jwks"), timeout=TIMEOUT).json()["keys"]]
    assert kids == [kid, "demo-oidc-rs256"]
    flow = code_flow()
    token = redeem(flow["code"], flow["verifier"]).json()["id_token"]
    assert jwt.get_unverified_header(token)["kid"] == kid
    verify_id_token(token, flow["nonce"])
    requests.post(url("/_control/reset"), timeout=TIMEOUT).raise_for_status()
    kids = [k["kid"] for k in requests.get(url("/jwks"), timeout=TIMEOUT).json()["keys"]]
    assert kids == ["demo-oidc-rs256"]


def test_compose_runs_the_provider_with_the_mounted_key_material():
    compose = yaml.safe_load((REPO / "envoy" / "docker-compose.yaml").read_text(encoding="utf-8"))
    service = compose["services"]["demo-services"]
    mounts = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = (REPO / "envoy" / source).resolve()
    command = service["command"]
    for flag, file in (("--oidc-key", "oidc-rs256.pem"), ("--oidc-client-secret-file", "oidc-client-secret")):
        assert mounts[command[command.index(flag) + 1]] == (KEYS / file).resolve()
    published = {p.split(":")[-1] for p in service["ports"]}
    assert {str(p) for p in SERVICES.values()} <= published
    dockerfile = (REPO / "envoy" / "Dockerfile.demo-services").read_text(encoding="utf-8")
    assert str(SERVICES["oidc"]) in dockerfile
