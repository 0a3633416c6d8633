"""Demo tokens for `make bench-verify`: N RS256 and N ES256 tokens signed with
the committed demo keys (examples/keys) by the integration tests' own
`helpers.mint_token`, one per line, valid for an hour."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from helpers import mint_token  # noqa: E402


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    for kid in ("demo-rs256", "demo-es256"):
        for i in range(count):
            print(mint_token("users:read", sub=f"user-{i}", kid=kid, ttl=3600))


if __name__ == "__main__":
    main()
