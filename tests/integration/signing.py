"""An independent RFC 9421 / RFC 9530 signer for the app gateway (10001).

Standard library only (hashlib, hmac, base64): it shares no code with the
replay-guard filter, so a test that passes proves two implementations agree.

    from signing import Signer
    s = Signer.demo()                       # demo master secret, examples/keys/app-master.key
    headers = s.sign("GET", "127.0.0.1:10001", "/api/v1/users/7?size=10")
    headers = s.sign("POST", "127.0.0.1:10001", "/api/v1/orders", body=b'{"item_id":"a","quantity":1}')

Key ids are `<device>:<user>:<expiry>` (optionally `:<version>`); the key is
HMAC-SHA256(master secret, key id as UTF-8). The signature covers `@method`,
`@authority`, `@path`, `@query` when the target has one and `content-digest`
when there is a body, with `created`, `keyid` and `nonce` parameters, under
the label `app`.

Run as a script to print the headers for curl:

    python3 tests/integration/signing.py POST http://127.0.0.1:10001/api/v1/orders '{"item_id":"a","quantity":1}'
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[2]
DEMO_MASTER = REPO / "examples" / "keys" / "app-master.key"


def content_digest(body: bytes, algorithms: tuple[str, ...] = ("sha-256",)) -> str:
    """RFC 9530 Content-Digest of `body` (a structured-field dictionary)."""
    parts = []
    for alg in algorithms:
        h = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}[alg](body).digest()
        parts.append(f"{alg}=:{base64.b64encode(h).decode()}:")
    return ", ".join(parts)


def derive_key(master: bytes, key_id: str) -> bytes:
    return hmac.new(master, key_id.encode("utf-8"), hashlib.sha256).digest()


def _sf_string(s: str) -> str:
    if any(ord(c) < 0x20 or ord(c) > 0x7E for c in s):
        raise ValueError(f"not an sf-string: {s!r}")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Signer:
    master: bytes
    device: str = "phone-1"
    user: str = "alice"
    lifetime: int = 600
    version: str | None = None
    label: str = "app"
    #: Fixed clock for tests (Unix seconds); None = now.
    clock: float | None = None
    _extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def demo(cls, **kw) -> "Signer":
        return cls(master=base64.b64decode(DEMO_MASTER.read_text().strip()), **kw)

    def now(self) -> int:
        return int(self.clock if self.clock is not None else time.time())

    def key_id(self, expiry: int | None = None) -> str:
        exp = expiry if expiry is not None else self.now() + self.lifetime
        kid = f"{self.device}:{self.user}:{exp}"
        return f"{kid}:{self.version}" if self.version else kid

    def sign(
        self,
        method: str,
        authority: str,
        target: str,
        body: bytes | None = None,
        *,
        created: int | None = None,
        expires: int | None = None,
        nonce: str | None = None,
        key_id: str | None = None,
        components: list[str] | None = None,
        digest: bool = True,
    ) -> dict[str, str]:
        """Headers that sign the request: Signature-Input, Signature and,
        with a body, Content-Digest. `components=None` signs the contract set."""
        path, _, query = target.partition("?")
        has_query = "?" in target
        headers: dict[str, str] = {}
        if body is not None and digest:
            headers["Content-Digest"] = content_digest(body)
        if components is None:
            components = ["@method", "@authority", "@path"]
            if has_query:
                components.append("@query")
            if "Content-Digest" in headers:
                components.append("content-digest")
        values = {
            "@method": method.upper(),
            "@authority": authority.lower(),
            "@path": path or "/",
            "@query": "?" + query,
            "content-digest": headers.get("Content-Digest", ""),
        }
        created = self.now() if created is None else created
        params = "(" + " ".join(_sf_string(c) for c in components) + ")"
        params += f";created={created}"
        if expires is not None:
            params += f";expires={expires}"
        params += f";keyid={_sf_string(key_id or self.key_id())}"
        params += f";nonce={_sf_string(nonce or secrets.token_urlsafe(16))}"
        lines = [f'"{c}": {values[c]}' for c in components]
        lines.append(f'"@signature-params": {params}')
        base = "\n".join(lines).encode("utf-8")
        key = derive_key(self.master, key_id or self._last_key_id(params))
        sig = base64.b64encode(hmac.new(key, base, hashlib.sha256).digest()).decode()
        headers["Signature-Input"] = f"{self.label}={params}"
        headers["Signature"] = f"{self.label}=:{sig}:"
        return headers

    @staticmethod
    def _last_key_id(params: str) -> str:
        # the keyid written into params (so a fresh key id is derived once)
        start = params.index(';keyid="') + len(';keyid="')
        return params[start:params.index('"', start)]


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    method, url = argv[1], argv[2]
    body = argv[3].encode() if len(argv) > 3 else None
    u = urlsplit(url)
    target = u.path + (f"?{u.query}" if u.query else "")
    for name, value in Signer.demo().sign(method, u.netloc, target, body).items():
        print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
