"""The shipped modules export exactly the stream callbacks their filters implement.

Envoy enters a wasm VM for a stream event only when the module exports that
event's callback; filters/wasm-opt/optimize.sh removes the ones a module does
not list in filters/wasm-opt/callbacks. A callback implemented in Rust but
missing from that list would silently never run, so this test reads each
filter's proxy-wasm glue and checks the list against it, and the built
modules (build/wasm, what Envoy loads) against the list.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import REPO

import render  # envoy/render.py (on sys.path via helpers)

CALLBACKS_FILE = REPO / "filters" / "wasm-opt" / "callbacks"
WASM_DIR = render.LOCAL_WASM_DIR

# module (file stem) -> crate directory
CRATES = {
    "sanitize": "filters/sanitize",
    "jwt": "filters/jwt",
    "replay_guard": "filters/replay-guard",
    "e2ee": "filters/e2ee",
    "fds_block": "filters/fds-block",
    "passport": "filters/passport",
    "route_breaker": "filters/route-breaker",
    "san_authz": "filters/san-authz",
    "oidc": "filters/oidc",
}

# The optional callbacks filters/wasm-opt/callbacks can keep and optimize.sh
# otherwise removes (proxy_on_<name>).
LISTABLE_CALLBACKS = (
    "request_headers", "request_body", "request_trailers",
    "response_headers", "response_body", "response_trailers", "log", "done",
    "queue_ready", "foreign_function",
)
# Always exported: the lifecycle and root callbacks every filter relies on.
ALWAYS = (
    "proxy_on_context_create", "proxy_on_delete", "proxy_on_vm_start", "proxy_on_configure",
    "proxy_on_tick", "proxy_on_http_call_response", "proxy_on_memory_allocate",
)

# Optional callbacks optimize.sh may remove, as the SDK's trait methods
# (on_http_request_headers -> request_headers, on_queue_ready -> queue_ready).
RUST_METHOD = re.compile(
    r"\bfn on_(http_(?:request|response)_(?:headers|body|trailers)|log|done|queue_ready|foreign_function)\s*\("
)
# SDK methods of callbacks the list cannot keep yet (gRPC and network-filter
# callbacks have other export names): a filter that starts using one must
# extend optimize.sh first.
UNLISTABLE = re.compile(r"\bfn (on_grpc_\w+|on_new_connection|on_downstream_\w+|on_upstream_\w+)\s*\(")


def listed() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in CALLBACKS_FILE.read_text(encoding="utf-8").splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            out[words[0]] = set(words[1:])
    return out


def implemented(crate: str) -> set[str]:
    """Optional callbacks overridden in the crate's proxy-wasm glue (the files with its HttpContext)."""
    found: set[str] = set()
    for path in (REPO / crate / "src").rglob("*.rs"):
        text = path.read_text(encoding="utf-8")
        if "impl HttpContext for" not in text:
            continue
        for m in RUST_METHOD.finditer(text):
            found.add(m.group(1).removeprefix("http_"))
        unlistable = UNLISTABLE.search(text)
        assert not unlistable, f"{path}: {unlistable.group(1)} would be removed by filters/wasm-opt/optimize.sh"
    return found


def _leb(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def exports(module: Path) -> set[str]:
    """Export names of a wasm binary (export section, id 7)."""
    data = module.read_bytes()
    assert data[:4] == b"\0asm", module
    names: set[str] = set()
    i = 8
    while i < len(data):
        section = data[i]
        size, i = _leb(data, i + 1)
        end = i + size
        if section == 7:
            count, j = _leb(data, i)
            for _ in range(count):
                length, j = _leb(data, j)
                names.add(data[j:j + length].decode("utf-8"))
                j += length + 1  # name, kind byte
                _, j = _leb(data, j)  # index
        i = end
    return names


def test_every_implemented_callback_is_listed():
    lists = listed()
    for module, crate in CRATES.items():
        assert module in lists, f"filters/wasm-opt/callbacks has no line for {module}"
        assert "request_headers" in implemented(crate), f"{crate}: no HttpContext found"
        missing = implemented(crate) - lists[module]
        assert not missing, f"{module} implements {sorted(missing)} but filters/wasm-opt/callbacks does not keep them"


# The filters the chain can run (filters/chain/src/wasm.rs `filter_root`): all.
CHAIN_MEMBERS = list(CRATES)
RESPONSE_CALLBACKS = {"response_headers", "response_body", "response_trailers"}


def test_the_suite_keeps_every_filters_callbacks():
    lists = listed()
    union = set().union(*(lists[m] for m in CRATES))
    assert union <= lists["suite"], f"suite line misses {sorted(union - lists['suite'])}"


def test_the_chain_keeps_exactly_what_it_and_its_filters_implement():
    """The chain enters a filter only from its own callbacks: each callback a
    member filter implements must be one the chain implements, and
    chain_response.wasm (gateways with e2ee) exports exactly those;
    chain.wasm (every other gateway) exports the same minus the response
    callbacks, so the web chain's VM entries do not grow with e2ee's
    response steps (every other export is a VM entry per request for
    nothing)."""
    lists = listed()
    own = implemented("filters/chain")
    members = set().union(*(implemented(CRATES[m]) for m in CHAIN_MEMBERS))
    assert members <= own, f"filters/chain does not forward {sorted(members - own)} to its filters"
    assert lists["chain_response"] == own, f"chain_response line {sorted(lists['chain_response'])} != chain glue {sorted(own)}"
    assert lists["chain"] == own - RESPONSE_CALLBACKS, f"chain line {sorted(lists['chain'])}"
    # The filters whose response callbacks make render.py pick chain_response.
    responders = {m.replace("_", "-") for m in CHAIN_MEMBERS if implemented(CRATES[m]) & RESPONSE_CALLBACKS}
    assert responders == set(render.CHAIN_RESPONSE_FILTERS), responders


@pytest.mark.parametrize("module", [*CRATES, "suite", "chain", "chain_response"])
def test_built_module_exports_exactly_the_listed_callbacks(module):
    path = WASM_DIR / f"{module}.wasm"
    if not path.exists():
        pytest.skip(f"{path} not built (make build-wasm / build-suite / build-chain)")
    names = exports(path)
    keep = listed()[module]
    for callback in LISTABLE_CALLBACKS:
        assert (f"proxy_on_{callback}" in names) == (callback in keep), (module, callback)
    for name in ALWAYS:
        assert name in names, (module, name)
    assert not {n for n in names if n.startswith("proxy_on_grpc") or n.endswith("_data")}, module
