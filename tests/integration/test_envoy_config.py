"""Every shipped Envoy config is rendered from the one template and validated by the real Envoy.

No running stack needed: `envoy --mode validate` parses the config, builds every
listener and filter (loading the wasm modules and running their on_configure)
and exits.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import LISTENERS, REPO

import render  # envoy/render.py (on sys.path via helpers)

ENVOY = REPO / ".venv" / "bin" / "envoy"
COMPOSE_FILE = REPO / "envoy" / "docker-compose.yaml"
GATEWAYS = ("web", "app", "egress", "secure", "internal")

# The shipped per-filter config's shape, whatever WASM_BUILD the suite runs
# against (the native pass renders the egress gateway's blocks as
# DynamicModuleFilter; docs/native.md).
SHIPPED = {
    "local": dict(profile="local", wasm_build="filters"),
    "compose": dict(profile="compose", local_paths=True, wasm_build="filters"),
}


def envoy_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENVOY), "--mode", "validate", "--disable-hot-restart", "--log-level", "error", "-c", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("rendered")
    paths = {}
    for name, kwargs in SHIPPED.items():
        paths[name] = out / f"{name}.yaml"
        paths[name].write_text(render.render(**kwargs), encoding="utf-8")
    return paths


def listeners_by_name(path: Path) -> dict[str, dict]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {item["name"]: item for item in doc["static_resources"]["listeners"]}


def hcm(listener: dict) -> dict:
    chain = listener["filter_chains"][0]["filters"]
    assert chain[0]["name"] == "envoy.filters.network.http_connection_manager"
    return chain[0]["typed_config"]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_passes_envoy_validate(rendered, name):
    result = envoy_validate(rendered[name])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_compose_config_keeps_container_paths_and_service_names():
    text = render.render("compose")
    assert str(REPO) not in text
    doc = yaml.safe_load(text)
    secure = {item["name"]: item for item in doc["static_resources"]["listeners"]}["secure"]
    tls = secure["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["tls_certificates"][0]["certificate_chain"]["filename"] == "/etc/envoy/certs/server.pem"
    clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
    for name, cluster in clusters.items():
        assert cluster["type"] == "STRICT_DNS"
        address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        # each replica's own gateway-store sidecar; everything else: the demo services
        assert address["address"] == ("gateway-store" if name == "gateway_store" else "demo-services"), name
    replica2 = yaml.safe_load(render.render("compose", replica=2, overrides={"STORE_HOST": "gateway-store-2"}))
    store2 = {c["name"]: c for c in replica2["static_resources"]["clusters"]}["gateway_store"]
    address = store2["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("gateway-store-2", 18091)


def test_compose_file_mounts_what_the_compose_config_reads():
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    mounts = {}
    for volume in compose["services"]["envoy"]["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = (COMPOSE_FILE.parent / source).resolve()
    compose_vars = render.PROFILES["compose"]
    local_vars = render.variables_for("compose", local_paths=True)
    for var in ("WASM_DIR", "CERT_DIR"):
        assert mounts[compose_vars[var]] == Path(local_vars[var]).resolve(), var
    assert mounts["/etc/envoy/envoy.yaml"] == (REPO / "build" / "compose" / "envoy.yaml").resolve()
    published = {p.split(":")[-1] for p in compose["services"]["envoy"]["ports"]}
    assert {str(p) for p in LISTENERS.values()} | {"9901"} <= published
    # the second replica: its own rendered config, every port + 100, admin 9902
    replica2 = compose["services"]["envoy-2"]
    assert "../build/compose/envoy-2.yaml:/etc/envoy/envoy.yaml:ro" in replica2["volumes"]
    published = {p.split(":")[-1] for p in replica2["ports"]}
    assert {str(render.replica_port(p, 2)) for p in LISTENERS.values()} | {"9902"} <= published


def test_listeners_and_ports_follow_the_contract(rendered):
    listeners = listeners_by_name(rendered["local"])
    for name, port in LISTENERS.items():
        address = listeners[name]["address"]["socket_address"]
        assert (address["address"], address["port_value"]) == ("127.0.0.1", port)


@pytest.mark.parametrize("gateway", [*GATEWAYS, "bare"])
def test_every_gateway_is_hardened(rendered, gateway):
    config = hcm(listeners_by_name(rendered["local"])[gateway])
    assert config["normalize_path"] is True
    assert config["merge_slashes"] is True
    assert config["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    assert config["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST"
    assert config["use_remote_address"] is True
    assert config["generate_request_id"] is True
    assert config["preserve_external_request_id"] is True
    assert config["local_reply_config"]["mappers"]
    assert config["access_log"]
    assert listeners_by_name(rendered["local"])[gateway]["per_connection_buffer_limit_bytes"] == 1 << 20


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_every_gateway_runs_sanitize_first_and_router_last(rendered, gateway):
    filters = hcm(listeners_by_name(rendered["local"])[gateway])["http_filters"]
    assert filters[0]["name"] == "sanitize"
    assert filters[-1]["name"] == "envoy.filters.http.router"
    plugin = filters[0]["typed_config"]["config"]
    assert plugin["vm_config"]["code"]["local"]["filename"].endswith("/sanitize.wasm")
    assert plugin["failure_policy"] == "FAIL_CLOSED"
    assert plugin["allow_on_headers_stop_iteration"] is True
    config_file = REPO / "examples" / "config" / "sanitize" / f"{gateway}.json"
    assert json.loads(plugin["configuration"]["value"]) == json.loads(config_file.read_text(encoding="utf-8"))


def first_route(routes: list[dict], method: str, path: str) -> dict | None:
    """The route Envoy picks for (method, path), for the matchers the template uses."""
    for route in routes:
        match = route["match"]
        if "path" in match:
            hit = path == match["path"]
        elif "prefix" in match:
            hit = path.startswith(match["prefix"])
        elif "path_separated_prefix" in match:
            prefix = match["path_separated_prefix"]
            hit = path == prefix or path.startswith(prefix + "/")
        else:
            raise AssertionError(f"matcher not modelled by this test: {match}")
        for header in match.get("headers", []):
            assert header["name"] == ":method", header
            string_match = header["string_match"]
            if "exact" in string_match:
                same = method == string_match["exact"]
            else:
                same = re.fullmatch(string_match["safe_regex"]["regex"], method) is not None
            hit = hit and same != header.get("invert_match", False)
        if hit:
            return route
    return None


def runs_route_breaker(route: dict) -> bool:
    per_filter = route.get("typed_per_filter_config", {}).get("route-breaker", {})
    return not per_filter.get("disabled", False)


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_every_breaker_lands_on_a_route_that_runs_route_breaker(rendered, gateway):
    """Routes that no breaker can guard disable route-breaker (Envoy then never
    creates it there); a breaker of the shipped config must never sit on one."""
    config = hcm(listeners_by_name(rendered["local"])[gateway])
    routes = config["route_config"]["virtual_hosts"][0]["routes"]
    plugin = next(f for f in config["http_filters"] if f["name"] == "route-breaker")
    breakers = json.loads(plugin["typed_config"]["config"]["configuration"]["value"])["routes"]
    assert breakers, gateway
    for breaker in breakers:
        assert "route_name" not in breaker, "extend this test for breakers keyed by route name"
        prefix = breaker["prefix"]
        # What the breaker's matcher takes (segment boundaries): the prefix
        # itself unless it ends with '/', and anything below it.
        probes = [prefix + "x", prefix + "x/y"] if prefix.endswith("/") else [prefix, prefix + "/x"]
        for method in breaker.get("methods") or ["GET", "POST", "DELETE"]:
            for path in probes:
                route = first_route(routes, method, path)
                assert route is not None and runs_route_breaker(route), (breaker["name"], method, path)
    # Matrix parameters: the breaker's matcher reads /api/v1/unstable;x/y as
    # /api/v1/unstable/y, Envoy's prefix route does not, so a route that
    # disables the filter would see it. sanitize must refuse ';' and '%3B'
    # wherever route-breaker is disabled somewhere.
    if any(not runs_route_breaker(r) for r in routes):
        sanitize = next(f for f in config["http_filters"] if f["name"] == "sanitize")
        rules = json.loads(sanitize["typed_config"]["config"]["configuration"]["value"])
        assert rules.get("path", {}).get("reject_semicolon", True) is True, gateway
    if gateway in ("web", "app"):
        # The point of it: the authenticated API routes do not pay for a
        # filter that has nothing to do there.
        assert not runs_route_breaker(first_route(routes, "GET", "/api/v1/users/1"))
        assert not runs_route_breaker(first_route(routes, "GET", "/health"))


def route_prefixes(node) -> set[str]:
    """Every `prefix` that is a path (starts with '/') anywhere in a filter's JSON config."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "prefix" and isinstance(value, str) and value.startswith("/"):
                found.add(value)
            else:
                found |= route_prefixes(value)
    elif isinstance(node, list):
        for item in node:
            found |= route_prefixes(item)
    return found


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_sanitize_guards_the_letter_case_of_every_route_of_its_gateway(rendered, gateway):
    """Paths are case-sensitive (contract): a path that matches a route only
    when letter case is ignored is refused by sanitize, which knows the
    routes from its `path.case_sensitive_prefixes` and its own route rules.
    Every route of the gateway, Envoy's and every filter's, must be there,
    or `/api/v1/Orders` would meet the catch-all instead of the orders rules."""
    config = hcm(listeners_by_name(rendered["local"])[gateway])
    routes = config["route_config"]["virtual_hosts"][0]["routes"]
    wanted: set[str] = set()
    for route in routes:
        match = route["match"]
        for key in ("path", "prefix", "path_separated_prefix"):
            if key in match and match[key] != "/":
                wanted.add(match[key])
    plugins = {
        f["name"]: json.loads(f["typed_config"]["config"]["configuration"]["value"])
        for f in config["http_filters"]
        if f["name"] != "envoy.filters.http.router"
    }
    for name, plugin in plugins.items():
        wanted |= route_prefixes(plugin.get("routes", []))
        wanted |= route_prefixes(plugin.get("rules", []))
        wanted |= route_prefixes(plugin.get("policies", []))
    # "/" (a rule for every path, e.g. the internal gateway's breaker) has no
    # letter case of its own to guard, as for Envoy's catch-all route above
    wanted.discard("/")
    sanitize = plugins["sanitize"]
    guarded = set(sanitize.get("path", {}).get("case_sensitive_prefixes", []))
    guarded |= {r["prefix"] for r in sanitize.get("routes", [])}
    assert wanted, gateway
    assert not wanted - guarded, f"{gateway}: add to sanitize's path.case_sensitive_prefixes"


def test_upstream_connections_idle_out_before_the_demo_services_drop_them(rendered):
    """The demo services drop a keep-alive connection after 30 s without a
    request (examples/demo-services: header_read_timeout). Envoy must close
    its idle pooled connections first, or a request written as the server
    closes fails: passport's 30 s issuer refresh hit exactly that edge."""
    source = (REPO / "examples" / "demo-services" / "src" / "main.rs").read_text(encoding="utf-8")
    server_limit = int(re.search(r"header_read_timeout\(Duration::from_secs\((\d+)\)\)", source).group(1))
    doc = yaml.safe_load(rendered["local"].read_text(encoding="utf-8"))
    for cluster in doc["static_resources"]["clusters"]:
        options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        idle = options["common_http_protocol_options"]["idle_timeout"]
        assert idle.endswith("s") and int(idle[:-1]) < server_limit, (cluster["name"], idle, server_limit)


def test_bare_gateway_has_no_wasm_filter_and_the_web_routes(rendered):
    listeners = listeners_by_name(rendered["local"])
    bare = hcm(listeners["bare"])
    assert [f["name"] for f in bare["http_filters"]] == ["envoy.filters.http.router"]
    web_routes = hcm(listeners["web"])["route_config"]["virtual_hosts"][0]["routes"]
    assert bare["route_config"]["virtual_hosts"][0]["routes"] == web_routes


def test_only_the_gateways_behind_the_load_balancer_trust_one_forwarding_hop(rendered):
    listeners = listeners_by_name(rendered["local"])
    hops = {name: hcm(listeners[name]).get("xff_num_trusted_hops", 0) for name in (*GATEWAYS, "bare")}
    assert hops == {"web": 1, "app": 1, "bare": 1, "internal": 1, "egress": 0, "secure": 0}


def test_secure_gateway_requires_a_client_certificate_and_sets_xfcc(rendered):
    secure = listeners_by_name(rendered["local"])["secure"]
    tls = secure["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    assert hcm(secure)["forward_client_cert_details"] == "SANITIZE_SET"
    for name in ("web", "app", "egress", "internal", "bare"):
        assert "forward_client_cert_details" not in hcm(listeners_by_name(rendered["local"])[name])


# ------------------------------------------------------------ internal 10444


@pytest.mark.parametrize("profile", sorted(SHIPPED))
def test_internal_gateway_serves_tls_with_the_server_certificate_and_asks_for_no_client_certificate(rendered, profile):
    internal = listeners_by_name(rendered[profile])["internal"]
    tls = internal["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["@type"].endswith("DownstreamTlsContext")
    assert not tls.get("require_client_certificate", False)
    common = tls["common_tls_context"]
    # no validation context: Envoy sends no CertificateRequest at all
    assert "validation_context" not in common and "validation_context_sds_secret_config" not in common
    assert common["alpn_protocols"] == ["h2", "http/1.1"]
    assert common["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_2"
    secure = listeners_by_name(rendered[profile])["secure"]
    secure_common = secure["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    assert common["tls_certificates"] == secure_common["tls_certificates"]
    assert common["tls_certificates"][0]["certificate_chain"]["filename"].endswith("/server.pem")
    assert len(internal["filter_chains"]) == 1, "a plain-text filter chain would accept http://"


def test_internal_gateway_routes_everything_to_the_echo_service(rendered):
    routes = hcm(listeners_by_name(rendered["local"])["internal"])["route_config"]["virtual_hosts"][0]["routes"]
    for path in ("/", "/x", "/tools/a?b=1", "/admin", "/admin/users", "/oauth2/callback", "/oauth2/logout"):
        route = first_route(routes, "GET", path.split("?")[0])
        assert route is not None and route["route"]["cluster"] == "echo", path
        assert runs_route_breaker(route), path
    health = first_route(routes, "GET", "/health")
    assert health["direct_response"]["status"] == 200 and not runs_route_breaker(health)
    assert first_route(routes, "TRACE", "/x")["direct_response"]["status"] == 405


def test_internal_gateway_runs_sanitize_oidc_route_breaker_with_its_own_configs(rendered):
    filters = hcm(listeners_by_name(rendered["local"])["internal"])["http_filters"]
    assert [f["name"] for f in filters] == ["sanitize", "oidc", "route-breaker", "envoy.filters.http.router"]
    for f, file in zip(filters, ("sanitize/internal.json", "oidc/internal.json", "route-breaker/internal.json")):
        value = json.loads(f["typed_config"]["config"]["configuration"]["value"])
        assert value == json.loads((REPO / "examples" / "config" / file).read_text(encoding="utf-8")), file
    sanitize = json.loads(filters[0]["typed_config"]["config"]["configuration"]["value"])
    removed = set(sanitize["remove_headers"]["exact"])
    # the identity headers the oidc filter sets: client copies are always stripped
    assert {"x-user-id", "x-user-email", "x-user-groups"} <= removed
    assert "x-user-" in sanitize["remove_headers"]["prefixes"]
    assert sanitize["max_body_bytes"] == 64 * 1024


def test_oidc_provider_cluster_points_at_the_demo_provider(rendered):
    for profile, host in (("local", "127.0.0.1"), ("compose", "demo-services")):
        doc = yaml.safe_load(rendered[profile].read_text(encoding="utf-8"))
        cluster = {c["name"]: c for c in doc["static_resources"]["clusters"]}["oidc_provider"]
        address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        assert (address["address"], address["port_value"]) == (host, 18084), profile
        assert cluster["connect_timeout"] == "1s"
        options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert options["explicit_http_config"] == {"http_protocol_options": {}}, "plain HTTP/1.1"


def filter_order(manager: dict) -> list[str]:
    """The manager's filters in order, a chain filter (wasm, or the native
    module's chain block) expanded into its parts."""
    out = []
    for f in manager["http_filters"]:
        if f["name"] == "chain":
            tc = f["typed_config"]
            if tc["@type"].endswith("DynamicModuleFilter"):
                doc = json.loads(json.loads(tc["filter_config"]["value"])["config"])
            else:
                doc = json.loads(tc["config"]["configuration"]["value"])
            out += [p.get("instance", p["name"]) for p in doc["filters"]]
        else:
            out.append(f["name"])
    return out


@pytest.mark.parametrize("build", render.WASM_BUILDS)
def test_the_internal_gateway_runs_sanitize_oidc_route_breaker_in_every_build(build):
    """The contract's chain of the internal gateway, in every build (one
    chain filter under the chain build: docs/chain.md), with the client
    secret reaching oidc's VM as an environment variable (natively: Envoy's
    own environment, docs/native.md "Secrets") and never in its JSON
    configuration."""
    env: dict[str, str] = {}
    listeners = listeners_by_name_of(render.render("local", wasm_build=build, environment=env))
    manager = hcm(listeners["internal"])
    assert filter_order(manager) == ["sanitize", "oidc", "route-breaker", "envoy.filters.http.router"]
    typed = next(f for f in manager["http_filters"] if f["name"] in ("oidc", "chain"))["typed_config"]
    secret = (REPO / "examples" / "keys" / "oidc-client-secret").read_text().strip()
    if build == "native":
        # Every filter of it a DynamicModuleFilter block (docs/native.md).
        assert all(f["typed_config"]["@type"].endswith("DynamicModuleFilter")
                   for f in manager["http_filters"][:-1])
        assert env["OIDC_CLIENT_SECRET"] == secret
        envelope = typed["filter_config"]["value"]
        assert secret not in envelope
        assert json.loads(json.loads(envelope)["config"])["client_secret_env"] == "OIDC_CLIENT_SECRET"
        return
    if build == "native-chain":
        # ONE native chain filter; oidc's part unchanged, its secret in
        # Envoy's environment (docs/native.md).
        assert typed["@type"].endswith("DynamicModuleFilter") and typed["filter_name"] == "chain"
        assert env["OIDC_CLIENT_SECRET"] == secret
        envelope = typed["filter_config"]["value"]
        assert secret not in envelope
        parts = json.loads(json.loads(envelope)["config"])["filters"]
        assert next(p["config"] for p in parts if p["name"] == "oidc")["client_secret_env"] == "OIDC_CLIENT_SECRET"
        return
    block = typed["config"]
    assert block["failure_policy"] == "FAIL_CLOSED"
    assert block["vm_config"]["environment_variables"]["key_values"]["OIDC_CLIENT_SECRET"] == secret
    assert secret not in block["configuration"]["value"]
    conf = json.loads(block["configuration"]["value"])
    if "filters" in conf:  # the chain: oidc's part, unchanged
        conf = next(p["config"] for p in conf["filters"] if p["name"] == "oidc")
    assert conf["client_secret_env"] == "OIDC_CLIENT_SECRET"


@pytest.mark.parametrize("build", render.WASM_BUILDS)
def test_the_app_gateway_runs_its_filters_in_order_in_every_build(build):
    """The app gateway's order (sanitize -> replay-guard -> e2ee ->
    sanitize-body -> fds-block -> passport -> route-breaker) in every build;
    under the chain build it is ONE wasm filter (chain_response.wasm, whose
    exports carry e2ee's response steps), sanitize-body a named instance of
    sanitize with its own configuration, and every other gateway stays on
    chain.wasm, which exports no response callback."""
    listeners = listeners_by_name_of(render.render("local", wasm_build=build))
    manager = hcm(listeners["app"])
    assert filter_order(manager) == ["sanitize", "replay-guard", "e2ee", "sanitize-body", "fds-block",
                                     "passport", "route-breaker", "envoy.filters.http.router"]
    wasm = [f for f in manager["http_filters"] if f["typed_config"]["@type"].endswith("wasm.v3.Wasm")]
    if build == "native":
        # Natively every filter of it is a DynamicModuleFilter block (docs/native.md).
        native = [f for f in manager["http_filters"] if f["typed_config"]["@type"].endswith("DynamicModuleFilter")]
        assert (len(wasm), len(native)) == (0, 7)
        return
    if build == "native-chain":
        # ONE native filter, the chain, runs the gateway; so it does every
        # other gateway (docs/native.md).
        native = [f for f in manager["http_filters"] if f["typed_config"]["@type"].endswith("DynamicModuleFilter")]
        assert not wasm and [f["typed_config"]["filter_name"] for f in native] == ["chain"]
        for name in ("web", "egress", "secure", "internal"):
            [chain] = [f for f in hcm(listeners[name])["http_filters"] if f["name"] == "chain"]
            assert chain["typed_config"]["filter_name"] == "chain", name
        return
    if build != "chain":
        assert len(wasm) == 7
        return
    assert [f["name"] for f in wasm] == ["chain"], "the app gateway runs exactly one wasm filter"
    conf = wasm[0]["typed_config"]["config"]
    assert conf["vm_config"]["vm_id"] == "chain_response"
    assert conf["vm_config"]["code"]["local"]["filename"].endswith("/chain_response.wasm")
    parts = json.loads(conf["configuration"]["value"])["filters"]
    body = next(p for p in parts if p.get("instance") == "sanitize-body")
    assert body["name"] == "sanitize"
    assert body["config"] == json.loads((REPO / "examples/config/sanitize/app-body.json").read_text())
    for name in ("web", "egress", "secure", "internal"):
        [chain] = [f for f in hcm(listeners[name])["http_filters"] if f["name"] == "chain"]
        assert chain["typed_config"]["config"]["vm_config"]["vm_id"] == "chain", name


def test_the_chain_build_refuses_a_wasm_filter_it_cannot_run(tmp_path):
    text = render.render("local", wasm_build="filters").replace("/e2ee.wasm", "/unknown.wasm")
    with pytest.raises(render.RenderError, match="cannot run wasm filter 'e2ee'"):
        render.to_chain(text, "/wasm")


def test_the_chain_build_leaves_a_listener_without_gateway_filters_as_it_is():
    """The bench's floors (tests/bench/listeners.yaml: a no-op wasm filter)
    are not gateways: the chain transform keeps their blocks (make bench
    renders them under every build)."""
    bench = REPO / "tests" / "bench" / "listeners.yaml"
    text = render.render("local", wasm_build="chain", extra_listeners=[bench])
    noop = listeners_by_name_of(text)["bench_noop"]
    manager = noop["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = [f for f in manager["http_filters"] if f["typed_config"]["@type"].endswith("wasm.v3.Wasm")]
    assert wasm and all("noop" in f["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"]
                        for f in wasm)


def listeners_by_name_of(text: str) -> dict[str, dict]:
    return {item["name"]: item for item in yaml.safe_load(text)["static_resources"]["listeners"]}


# ------------------------------------------------------------------ render.py


def test_render_fails_on_an_unknown_variable(tmp_path):
    template = tmp_path / "t.yaml"
    template.write_text("a: ${NOPE}\n")
    with pytest.raises(render.RenderError, match="unknown variable"):
        render.render("local", template=template)


def test_render_ignores_placeholders_in_comments(tmp_path):
    template = tmp_path / "t.yaml"
    template.write_text("# ${NOPE}\na: ${LISTEN_ADDR}\n# @extra-listeners\n# @extra-clusters\n")
    assert "a: 127.0.0.1" in render.render("local", template=template)


@pytest.mark.parametrize("content, match", [
    (None, "cannot read"),
    ('{"a": 1,}', "invalid"),
    ('{"a": 1, "a": 2}', "duplicate key"),
])
def test_render_fails_on_a_bad_json_include(tmp_path, content, match):
    template = tmp_path / "t.yaml"
    template.write_text("value: ${json:c.json}\n# @extra-listeners\n# @extra-clusters\n")
    if content is not None:
        (tmp_path / "c.json").write_text(content)
    with pytest.raises(render.RenderError, match=match):
        render.render("local", template=template, include_root=tmp_path)


def test_json_include_is_a_yaml_string_holding_the_json(tmp_path):
    template = tmp_path / "t.yaml"
    template.write_text("value: ${json:c.json}\n# @extra-listeners\n# @extra-clusters\n")
    data = {"quote": "\"", "backslash": "\\", "unicode": "é✓", "nested": {"list": [1, 2.5, None, True]}}
    (tmp_path / "c.json").write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    value = yaml.safe_load(render.render("local", template=template, include_root=tmp_path))["value"]
    assert isinstance(value, str)
    assert json.loads(value) == data


def test_json_include_cannot_escape_the_include_root(tmp_path):
    template = tmp_path / "t.yaml"
    template.write_text("value: ${json:../secret.json}\n")
    with pytest.raises(render.RenderError, match="relative path"):
        render.render("local", template=template, include_root=tmp_path)


def test_extra_listeners_are_spliced_into_the_listener_list(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "# a bench listener\n"
        "- name: extra\n"
        "  address: { socket_address: { address: ${LISTEN_ADDR}, port_value: 10099 } }\n"
        "  filter_chains: []\n"
    )
    doc = yaml.safe_load(render.render("local", extra_listeners=[extra]))
    names = [item["name"] for item in doc["static_resources"]["listeners"]]
    assert names[-1] == "extra"
    assert set(LISTENERS) <= set(names)


def test_extra_file_must_be_a_yaml_list(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("name: extra\n")
    with pytest.raises(render.RenderError, match="YAML list"):
        render.render("local", extra_listeners=[extra])
