#!/usr/bin/env bash
# Regenerate every piece of DEMO key material under examples/keys and
# examples/certs: JWT signing keys + JWKS, the passport signing key + JWKS,
# the app gateway's master secret, the demo Redis password, the demo OIDC
# provider's signing key and client secret, and the mTLS demo PKI.
#
#   DEMO ONLY — never use any of this in production.
#
# Needs only `openssl` (1.1.1 or 3.x) and `python3` (standard library).
# Re-runnable: every run replaces all files with fresh keys, so tokens minted,
# signatures computed or certificates pinned with the old material stop
# working. Works from any current directory.
#
# Usage: examples/gen-demo-material.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KEYS_DIR="$HERE/keys"
CERTS_DIR="$HERE/certs"

CA_DAYS=3650   # 10 years
LEAF_DAYS=1825 # 5 years

command -v openssl >/dev/null || { echo "openssl not found" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 not found" >&2; exit 1; }

# Everything is built in a scratch directory first (CSRs, configs and partial
# output never land in the repo) and moved into place at the end.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gen-demo-material.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
OUT_KEYS="$WORK/keys"
OUT_CERTS="$WORK/certs"
mkdir -p "$OUT_KEYS" "$OUT_CERTS"

# --- helpers ----------------------------------------------------------------

gen_ec() {  # PKCS#8 PEM, EC P-256
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

gen_rsa() { # PKCS#8 PEM, RSA 2048
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null
}

serial() {  # random positive 127-bit serial number, no serial file
  printf '0x%s' "$(openssl rand -hex 16 | sed 's/^./7/')"
}

# Our own config so the system openssl.cnf adds nothing we did not ask for.
write_conf() { # <file>
  cat >"$1" <<'EOF'
[req]
distinguished_name = req_dn
prompt             = no
utf8               = yes
string_mask        = utf8only

[req_dn]
CN = placeholder

[v3_ca]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash

[v3_server]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid, issuer
EOF
}

make_ca() { # <name> <O> <CN>
  local name="$1" org="$2" cn="$3"
  gen_ec "$OUT_CERTS/$name.key"
  openssl req -new -x509 -config "$WORK/openssl.cnf" -extensions v3_ca \
    -key "$OUT_CERTS/$name.key" -sha256 -days "$CA_DAYS" -set_serial "$(serial)" \
    -subj "/O=$org/CN=$cn" \
    -out "$OUT_CERTS/$name.pem"
}

# sign_leaf <name> <CN> <ca name> <extension section> [extra config text]
sign_leaf() {
  local name="$1" cn="$2" ca="$3" section="$4" extra="${5:-}"
  local ext="$WORK/$name.ext"
  cp "$WORK/openssl.cnf" "$ext"
  [ -n "$extra" ] && printf '%s\n' "$extra" >>"$ext"
  gen_ec "$OUT_CERTS/$name.key"
  openssl req -new -config "$ext" -key "$OUT_CERTS/$name.key" -sha256 \
    -subj "/O=Demo Gateway (DEMO ONLY)/CN=$cn" -out "$WORK/$name.csr"
  openssl x509 -req -in "$WORK/$name.csr" -sha256 -days "$LEAF_DAYS" \
    -CA "$OUT_CERTS/$ca.pem" -CAkey "$OUT_CERTS/$ca.key" -set_serial "$(serial)" \
    -extfile "$ext" -extensions "$section" \
    -out "$OUT_CERTS/$name.pem" 2>/dev/null
  rm -f "$WORK/$name.csr" "$ext"
}

# A client's leaf: san-authz refuses a client certificate that is a CA, whose
# keyUsage lacks digitalSignature or whose extendedKeyUsage lacks clientAuth
# (docs/filters/san-authz.md, "The leaf profile").
client_section() { # <section> <URI SAN>
  cat <<EOF
[$1]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth
subjectAltName         = URI:$2
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid, issuer
EOF
}

write_conf "$WORK/openssl.cnf"

# --- JWT signing keys, passport key, app master secret ------------------------

gen_rsa "$OUT_KEYS/jwt-rs256.pem"
gen_ec  "$OUT_KEYS/jwt-es256.pem"
gen_ec  "$OUT_KEYS/passport-es256.pem"
openssl rand -base64 32 >"$OUT_KEYS/app-master.key"   # 44 chars + newline
# The demo Redis `default` user's password (and the gateway-store ACL user's):
# hex, so it needs no quoting in redis.conf, URLs or shells.
openssl rand -hex 24 >"$OUT_KEYS/redis-password"      # 48 chars + newline

# --- demo OIDC provider (demo-services, 18084) ---------------------------------
# Its ID-token signing key (kid `demo-oidc-rs256`; the provider serves the
# public half at /jwks) and the secret of its one client, `internal-gateway`
# (32 random bytes, base64url without padding: no quoting needed anywhere).
gen_rsa "$OUT_KEYS/oidc-rs256.pem"
openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n' >"$OUT_KEYS/oidc-client-secret"
echo >>"$OUT_KEYS/oidc-client-secret"                  # 43 chars + newline

# --- demo PKI ------------------------------------------------------------------

make_ca ca       "Demo Gateway (DEMO ONLY)" "Demo Gateway CA (DEMO ONLY)"
make_ca other-ca "Unrelated Org (DEMO ONLY)" "Other Unrelated CA (DEMO ONLY)"

sign_leaf server          localhost                          ca       v3_server
sign_leaf partner-billing "partner-a billing (DEMO ONLY)"    ca       v3_client \
  "$(client_section v3_client spiffe://partner.example/ns/partner-a/sa/billing)"
sign_leaf internal-admin  "internal tools admin (DEMO ONLY)" ca       v3_client \
  "$(client_section v3_client spiffe://internal.example/ns/tools/sa/admin)"
sign_leaf stranger        "stranger (DEMO ONLY)"             ca       v3_client \
  "$(client_section v3_client spiffe://stranger.example/ns/nowhere/sa/nobody)"
# Negative-test client: the partner's SAN, but issued by the unrelated CA.
sign_leaf other-ca-client "partner-a billing wrong CA (DEMO ONLY)" other-ca v3_client \
  "$(client_section v3_client spiffe://partner.example/ns/partner-a/sa/billing)"

# --- JWKS (public halves), derived from the keys via openssl text output ------

python3 - "$OUT_KEYS" <<'PY'
import base64, json, re, subprocess, sys

keys_dir = sys.argv[1]

def openssl(*args):
    return subprocess.run(("openssl",) + args, check=True,
                          capture_output=True, text=True).stdout

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")

def hex_block(text, label):
    """Hex bytes of a 'label:' block in `openssl pkey -text` output."""
    m = re.search(r"^%s:\s*\n((?:[ \t]+[0-9a-fA-F:]+\s*\n)+)" % re.escape(label),
                  text, re.M)
    if not m:
        raise SystemExit("no %r block in openssl output" % label)
    return bytes.fromhex(re.sub(r"[\s:]", "", m.group(1)))

def rsa_jwk(path, kid):
    text = openssl("pkey", "-in", path, "-text", "-noout")
    mod_hex = openssl("rsa", "-in", path, "-modulus", "-noout").strip()
    n = bytes.fromhex(mod_hex.split("=", 1)[1]).lstrip(b"\x00")
    e = int(re.search(r"publicExponent:\s*(\d+)", text).group(1))
    e_bytes = e.to_bytes((e.bit_length() + 7) // 8, "big")
    assert len(n) == 256, "expected RSA-2048, got %d-byte modulus" % len(n)
    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64u(n), "e": b64u(e_bytes)}

def ec_jwk(path, kid):
    text = openssl("pkey", "-in", path, "-text", "-noout")
    if not re.search(r"NIST CURVE:\s*P-256|prime256v1", text):
        raise SystemExit("%s is not a P-256 key" % path)
    pub = hex_block(text, "pub")
    assert pub[0] == 4 and len(pub) == 65, "expected uncompressed P-256 point"
    x, y = pub[1:33], pub[33:65]
    return {"kty": "EC", "kid": kid, "use": "sig", "alg": "ES256",
            "crv": "P-256", "x": b64u(x.rjust(32, b"\0")), "y": b64u(y.rjust(32, b"\0"))}

def write(name, obj):
    with open("%s/%s" % (keys_dir, name), "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")

write("jwks.json", {"keys": [
    rsa_jwk(keys_dir + "/jwt-rs256.pem", "demo-rs256"),
    ec_jwk(keys_dir + "/jwt-es256.pem", "demo-es256"),
]})
write("passport-jwks.json", {"keys": [
    ec_jwk(keys_dir + "/passport-es256.pem", "passport-2026-1"),
]})
PY

# --- self-check before anything replaces the committed files -----------------

for leaf in server partner-billing internal-admin stranger; do
  openssl verify -CAfile "$OUT_CERTS/ca.pem" "$OUT_CERTS/$leaf.pem" >/dev/null
done
openssl verify -CAfile "$OUT_CERTS/other-ca.pem" "$OUT_CERTS/other-ca-client.pem" >/dev/null
if openssl verify -CAfile "$OUT_CERTS/ca.pem" "$OUT_CERTS/other-ca-client.pem" >/dev/null 2>&1; then
  echo "other-ca-client.pem unexpectedly verifies against the demo CA" >&2; exit 1
fi

# The OIDC provider reads its key itself (demo-services refuses < 2048 bits).
openssl pkey -in "$OUT_KEYS/oidc-rs256.pem" -noout -text | grep -q 'Private-Key: (2048 bit' \
  || { echo "oidc-rs256.pem is not an RSA 2048 key" >&2; exit 1; }

# Sign a message with each private key (openssl) and verify it with the JWK
# alone (pure-Python RS256 / ES256): proves each JWKS entry is the public half
# of the PEM carrying the same kid.
msg="$WORK/msg"; printf 'demo-material self-check %s' "$(openssl rand -hex 8)" >"$msg"
for k in jwt-rs256 jwt-es256 passport-es256; do
  openssl dgst -sha256 -sign "$OUT_KEYS/$k.pem" -out "$WORK/$k.sig" "$msg"
done
python3 - "$OUT_KEYS" "$WORK" <<'PY'
import base64, hashlib, json, sys

keys_dir, work = sys.argv[1], sys.argv[2]
msg = open(work + "/msg", "rb").read()

def b64u_int(s):
    return int.from_bytes(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)), "big")

def rs256_ok(jwk, sig):
    n, e = b64u_int(jwk["n"]), b64u_int(jwk["e"])
    k = (n.bit_length() + 7) // 8
    em = pow(int.from_bytes(sig, "big"), e, n).to_bytes(k, "big")
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(msg).digest()
    return em == b"\x00\x01" + b"\xff" * (k - 3 - len(digest_info)) + b"\x00" + digest_info

# NIST P-256
P = 0xffffffff00000001000000000000000000000000ffffffffffffffffffffffff
A = P - 3
B = 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b
N = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551
G = (0x6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296,
     0x4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5)

def add(p, q):
    if p is None: return q
    if q is None: return p
    if p[0] == q[0] and (p[1] + q[1]) % P == 0: return None
    if p == q:
        l = (3 * p[0] * p[0] + A) * pow(2 * p[1], -1, P) % P
    else:
        l = (q[1] - p[1]) * pow(q[0] - p[0], -1, P) % P
    x = (l * l - p[0] - q[0]) % P
    return (x, (l * (p[0] - x) - p[1]) % P)

def mul(k, p):
    r = None
    while k:
        if k & 1: r = add(r, p)
        p = add(p, p); k >>= 1
    return r

def der_rs(sig):  # ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }
    assert sig[0] == 0x30
    i = 2 if sig[1] < 0x80 else 2 + (sig[1] & 0x7f)
    out = []
    for _ in range(2):
        assert sig[i] == 0x02
        ln = sig[i + 1]; out.append(int.from_bytes(sig[i + 2:i + 2 + ln], "big")); i += 2 + ln
    return out

def es256_ok(jwk, sig):
    if jwk.get("crv") != "P-256": return False
    qx, qy = b64u_int(jwk["x"]), b64u_int(jwk["y"])
    if (qy * qy - (qx ** 3 + A * qx + B)) % P:
        return False  # not on the curve
    r, s = der_rs(sig)
    if not (0 < r < N and 0 < s < N): return False
    z = int.from_bytes(hashlib.sha256(msg).digest(), "big")
    w = pow(s, -1, N)
    pt = add(mul(z * w % N, G), mul(r * w % N, (qx, qy)))
    return pt is not None and pt[0] % N == r

def check(jwks_file, kid, keyfile, alg):
    jwks = json.load(open("%s/%s" % (keys_dir, jwks_file)))
    jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    assert jwk["alg"] == alg and jwk["use"] == "sig", jwk
    for f, size in (("n", 256), ("x", 32), ("y", 32)):
        if f in jwk:
            assert "=" not in jwk[f]
            assert len(base64.urlsafe_b64decode(jwk[f] + "=" * (-len(jwk[f]) % 4))) == size, (kid, f)
    sig = open("%s/%s.sig" % (work, keyfile), "rb").read()
    ok = rs256_ok(jwk, sig) if alg == "RS256" else es256_ok(jwk, sig)
    if not ok:
        raise SystemExit("JWK %s does not verify a signature made with %s.pem" % (kid, keyfile))

check("jwks.json", "demo-rs256", "jwt-rs256", "RS256")
check("jwks.json", "demo-es256", "jwt-es256", "ES256")
check("passport-jwks.json", "passport-2026-1", "passport-es256", "ES256")
assert len(base64.b64decode(open(keys_dir + "/app-master.key").read().strip(), validate=True)) == 32
assert len(bytes.fromhex(open(keys_dir + "/redis-password").read().strip())) == 24
secret = open(keys_dir + "/oidc-client-secret").read().strip()
assert len(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))) == 32 and "=" not in secret
PY

# --- install -----------------------------------------------------------------

mkdir -p "$KEYS_DIR" "$CERTS_DIR"
# openssl creates private keys 0600; make everything 0644 (what a git checkout
# gives anyway) so a container running as another uid (the Envoy image runs as
# user envoy) can read the mounted demo files.
chmod 0644 "$OUT_KEYS"/* "$OUT_CERTS"/*
for f in "$OUT_KEYS"/*;  do mv -f "$f" "$KEYS_DIR/";  done
for f in "$OUT_CERTS"/*; do mv -f "$f" "$CERTS_DIR/"; done

# san-authz's behind-edge example trusts the demo CA inline (a wasm filter
# reads no files): keep it in step with the CA just written.
python3 - "$HERE/config/san-authz/behind-edge.json" "$CERTS_DIR/ca.pem" <<'PY'
import json, sys
cfg_path, ca_path = sys.argv[1], sys.argv[2]
try:
    cfg = json.load(open(cfg_path))
except FileNotFoundError:
    raise SystemExit(0)
cfg["identity"]["trusted_cas"] = [open(ca_path).read()]
open(cfg_path, "w").write(json.dumps(cfg, indent=2) + "\n")
PY

# The jwt and passport examples carry key material inline too (the web
# gateway's JWKS, the passport signing key): keep them in step as well, so a
# regeneration never leaves a config that the filters' own tests reject.
python3 - "$HERE" <<'PY'
import glob, json, os, sys
here = sys.argv[1]
jwks = json.load(open(os.path.join(here, "keys", "jwks.json")))
pem = open(os.path.join(here, "keys", "passport-es256.pem")).read()

def rewrite(path, fn):
    cfg = json.load(open(path))
    if fn(cfg):
        open(path, "w").write(json.dumps(cfg, indent=2) + "\n")

def jwt_cfg(cfg):
    changed = False
    for p in cfg.get("providers", []):
        inline = p.get("jwks", {}).get("inline")
        if inline is not None:
            p["jwks"]["inline"] = jwks
            changed = True
    return changed

def passport_cfg(node):
    # every inline {"kid", "pem"} signing key (token.signing_key, or a list of keys)
    changed = False
    if isinstance(node, dict):
        if isinstance(node.get("pem"), str) and "PRIVATE KEY" in node["pem"]:
            node["pem"] = pem
            changed = True
        for v in node.values():
            changed = passport_cfg(v) or changed
    elif isinstance(node, list):
        for v in node:
            changed = passport_cfg(v) or changed
    return changed

for path in glob.glob(os.path.join(here, "config", "jwt", "*.json")):
    rewrite(path, jwt_cfg)
for path in glob.glob(os.path.join(here, "config", "passport", "*.json")):
    rewrite(path, passport_cfg)
PY

echo "DEMO ONLY material regenerated:"
( cd "$HERE" && ls -1 keys/* certs/* | grep -v README.md | sed 's/^/  examples\//' )
