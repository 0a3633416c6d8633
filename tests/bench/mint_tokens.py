"""Demo tokens for `make bench-verify`: N RS256 and N ES256 tokens signed with
the committed demo keys (examples/keys), one per line, valid for an hour."""
import sys
import time
import uuid
from pathlib import Path

import jwt  # PyJWT (tests/requirements.txt)

KEYS = Path(__file__).resolve().parents[2] / "examples" / "keys"


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    now = int(time.time())
    for alg in ("RS256", "ES256"):
        key = (KEYS / f"jwt-{alg.lower()}.pem").read_text()
        for i in range(count):
            body = {"iss": "https://issuer.demo.local", "aud": "demo-api", "sub": f"user-{i}",
                    "iat": now, "exp": now + 3600, "jti": uuid.uuid4().hex, "scope": "users:read"}
            print(jwt.encode(body, key, algorithm=alg, headers={"kid": f"demo-{alg.lower()}"}))


if __name__ == "__main__":
    main()
