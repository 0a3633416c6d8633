"""An independent RFC 8188 `aes128gcm` implementation for the app gateway's
encrypted bodies (Python `cryptography`: AESGCM and HKDF-SHA256).

It shares no code with the e2ee filter, so a test that passes proves two
implementations agree. It can also build the malformed bodies the tests send
(padding, delimiters, record sizes of its caller's choice).

    from ece import ikm, encrypt, decrypt
    key = ikm(master, key_id)                 # HMAC-SHA256(master, "aes128gcm:" + key id)
    body = encrypt(b'{"item_id":"a","quantity":1}', key, key_id)
    plain, header = decrypt(response_body, key)

Run as a script to encrypt or decrypt with the demo master secret:

    python3 tests/integration/ece.py encrypt <key-id> < plain > body
    python3 tests/integration/ece.py decrypt <key-id> < body > plain
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

REPO = Path(__file__).resolve().parents[2]
DEMO_MASTER = REPO / "examples" / "keys" / "app-master.key"
TAG = 16


def demo_master() -> bytes:
    return base64.b64decode(DEMO_MASTER.read_text().strip())


def ikm(master: bytes, key_id: str) -> bytes:
    """The input keying material of a key id (the contract's derivation)."""
    return hmac.new(master, b"aes128gcm:" + key_id.encode("utf-8"), hashlib.sha256).digest()


def _hkdf(salt: bytes, secret: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def _keys(secret: bytes, salt: bytes) -> tuple[AESGCM, bytes]:
    cek = _hkdf(salt, secret, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = _hkdf(salt, secret, b"Content-Encoding: nonce\x00", 12)
    return AESGCM(cek), nonce


def _nonce(base: bytes, seq: int) -> bytes:
    return (int.from_bytes(base, "big") ^ seq).to_bytes(12, "big")


def header(salt: bytes, rs: int, key_id: str | bytes) -> bytes:
    kid = key_id.encode("utf-8") if isinstance(key_id, str) else key_id
    return salt + struct.pack(">IB", rs, len(kid)) + kid


def encrypt(plain: bytes, secret: bytes, key_id: str | bytes, rs: int = 4096, salt: bytes | None = None,
            delimiters: list[int] | None = None) -> bytes:
    """`plain` in records of `rs` (rs - 17 bytes of data each). `delimiters`
    overrides each record's delimiter (for malformed bodies)."""
    salt = salt if salt is not None else os.urandom(16)
    aead, base = _keys(secret, salt)
    per = rs - 17
    chunks = [plain[i:i + per] for i in range(0, len(plain), per)] or [b""]
    out = [header(salt, rs, key_id)]
    for seq, chunk in enumerate(chunks):
        last = seq == len(chunks) - 1
        d = delimiters[seq] if delimiters is not None else (2 if last else 1)
        record = chunk + (bytes([d]) if d is not None else b"")
        if not last and delimiters is None:
            record += b"\x00" * (per - len(chunk))
        out.append(aead.encrypt(_nonce(base, seq), record, None))
    return b"".join(out)


@dataclass
class Header:
    salt: bytes
    rs: int
    key_id: bytes


def decrypt(body: bytes, secret: bytes) -> tuple[bytes, Header]:
    """Decrypts a whole body; raises ValueError on anything RFC 8188 refuses."""
    if len(body) < 21:
        raise ValueError("short header")
    salt = body[:16]
    rs, idlen = struct.unpack(">IB", body[16:21])
    if rs < 18 or len(body) < 21 + idlen:
        raise ValueError("bad header")
    kid = body[21:21 + idlen]
    records = body[21 + idlen:]
    aead, base = _keys(secret, salt)
    out = []
    chunks = [records[i:i + rs] for i in range(0, len(records), rs)]
    if not chunks:
        raise ValueError("no record")
    for seq, chunk in enumerate(chunks):
        plain = aead.decrypt(_nonce(base, seq), chunk, None)  # raises InvalidTag
        stripped = plain.rstrip(b"\x00")
        if not stripped:
            raise ValueError("no delimiter")
        last = seq == len(chunks) - 1
        if stripped[-1] != (2 if last else 1):
            raise ValueError("bad delimiter")
        out.append(stripped[:-1])
    return b"".join(out), Header(salt, rs, kid)


def _main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("encrypt", "decrypt"):
        print(__doc__, file=sys.stderr)
        return 2
    key = ikm(demo_master(), argv[2])
    data = sys.stdin.buffer.read()
    if argv[1] == "encrypt":
        sys.stdout.buffer.write(encrypt(data, key, argv[2]))
    else:
        sys.stdout.buffer.write(decrypt(data, key)[0])
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
