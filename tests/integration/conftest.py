"""Session fixture: the demo stack (Redis, the demo services, the two real
Envoy replicas and their gateway-store sidecars).

Nothing is built here: `make test-integration` (and `make test`) build the
wasm filters, demo-services and the .venv first. The stack runs from the same
template and the same code as `make run` (envoy/stack.py), its children's
output goes to build/test-logs/, and a failing test shows the tails of those
logs in its report.

Developer escape hatches (not used by CI):
  DEMO_STACK_SET="WASM_DIR=/some/dir OTHER=value"  override render variables
  DEMO_STACK_INCLUDE_ROOT=/dir                     root of ${json:...} includes
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

import native_app
import probe
from helpers import REPO, echo_stats, native_build, wasm_build, web_url  # noqa: F401  (re-exported for tests)
from stack import Stack, StackError

LOG_DIR = REPO / "build" / "test-logs"
CONFIG = REPO / "build" / "test" / "envoy.yaml"


def _env_overrides() -> dict[str, str]:
    overrides = {}
    for item in os.environ.get("DEMO_STACK_SET", "").split():
        name, sep, value = item.partition("=")
        if not sep:
            raise pytest.UsageError(f"DEMO_STACK_SET: expected NAME=VALUE, got {item!r}")
        overrides[name] = value
    return overrides


# The ports are the machine's, so the lock is too (shared by every checkout).
LOCK = Path(os.environ.get("TMPDIR", "/tmp")) / "gateway-filters-stack.lock"


@pytest.fixture(scope="session")
def _stack_lock():
    """The contract fixes the stack's ports, so two test sessions on one
    machine cannot run side by side: the second waits for the first."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("\nwaiting for another test session's stack to finish ...", file=sys.stderr)
            started = time.monotonic()
            fcntl.flock(fh, fcntl.LOCK_EX)
            print(f"... waited {time.monotonic() - started:.0f}s", file=sys.stderr)
        yield
        fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def stack(_stack_lock) -> Stack:
    """The running demo stack; stopped (no orphans) at the end of the session."""
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    # The test-only probe listener (tests/integration/probe.py).
    extra = [probe.write_listener(CONFIG.parent / "probe-listeners.yaml")]
    if native_build():
        # The app gateway cut to native-ready filters, which the native
        # build converts whole (tests/integration/native_app.py):
        # test_e2ee_native.py runs e2ee on the native module there.
        extra.append(native_app.write_listener(CONFIG.parent / "app-native-listener.yaml", _env_overrides(),
                                               os.environ.get("DEMO_STACK_INCLUDE_ROOT") or None))
    running = Stack(
        log_dir=LOG_DIR,
        config_path=CONFIG,
        overrides=_env_overrides(),
        include_root=os.environ.get("DEMO_STACK_INCLUDE_ROOT") or None,
        extra_listeners=extra,
    )
    try:
        running.start()
    except StackError as exc:
        pytest.fail(f"the demo stack did not start: {exc}", pytrace=False)
    try:
        yield running
    finally:
        running.stop()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when == "call" and "stack" in getattr(item, "fixturenames", ()):
        for name in ("envoy.log", "envoy-access.log", "envoy-2.log", "demo-services.log", "redis.log",
                     "gateway-store.log", "gateway-store-2.log"):
            report.sections.append((f"build/test-logs/{name} (tail)", _tail(LOG_DIR / name)))
