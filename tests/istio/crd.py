"""Validate manifests against Istio's CRDs offline, as the API server would.

Two parts, because a CRD carries two kinds of rules:

1. The structural OpenAPI v3 schema, converted to JSON Schema (Draft 2020-12)
   and checked with `jsonschema`:
   * unknown fields are REJECTED: `additionalProperties: false` wherever
     `properties` is given without `x-kubernetes-preserve-unknown-fields`
     (kubectl's default `--validate=strict` field validation does the same);
   * `x-kubernetes-int-or-string` -> integer or string; `nullable` -> also null;
   * `format: int32|int64|uint32` -> the matching minimum/maximum;
   * the root gets what every object has: apiVersion, kind (exact) and
     metadata (name/namespace as DNS names, labels, annotations; nothing else).
2. The CEL rules (`x-kubernetes-validations`) and `x-kubernetes-list-type: map`
   key uniqueness, evaluated by `cel_errors` while walking the schema with the
   object. CEL is not interpreted: each rule TEXT that the manifests reach has a
   hand-written Python twin in `RULES`; reaching a rule without a twin is an
   error, so no rule is ever silently skipped. Implemented (WasmPlugin,
   EnvoyFilter):
     selector / targetRef / targetRefs (workloadSelector / targetRefs) at most one,
     no "*" in label keys or values, no empty label key,
     targetRef(s).namespace empty (no cross-namespace reference),
     url scheme in "", http, https, oci, file (Go's url.ParseRequestURI approximated),
     vmConfig.env: `value` only when valueFrom is INLINE,
     EnvoyFilter match: waypoint only with context WAYPOINT; port in 1..65535.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import jsonschema
import yaml

# Istio's CRDs as shipped (the team's copy beside the repository), and the
# extract of the kinds the manifests use, committed so that the tests also run
# where ../shared is absent; test_crd_extract_is_current keeps the two equal
# (UPDATE_CRDS=1 rewrites the extract).
SHARED_CRD_FILE = Path(__file__).resolve().parents[3] / "shared" / "istio-crds" / "crd-all.gen.yaml"
EXTRACT_FILE = Path(__file__).resolve().parent / "istio-crds.yaml"
EXTRACT_KINDS = ("WasmPlugin", "EnvoyFilter")
CRD_FILE = SHARED_CRD_FILE if SHARED_CRD_FILE.exists() else EXTRACT_FILE

INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1), "uint32": (0, 2**32 - 1)}
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser: the full CRD file is ~1 MB


def extract_text(source: Path = SHARED_CRD_FILE) -> str:
    """The CRDs of EXTRACT_KINDS, verbatim, from Istio's crd-all.gen.yaml."""
    text = source.read_text(encoding="utf-8")
    keep = []
    for chunk in re.split(r"(?m)^---\n", text):
        doc = yaml.load(chunk, Loader=_Loader) if chunk.strip() else None
        if doc and doc.get("kind") == "CustomResourceDefinition" and doc["spec"]["names"]["kind"] in EXTRACT_KINDS:
            keep.append(chunk if chunk.endswith("\n") else chunk + "\n")
    head = f"# Extract of Istio's CRDs ({', '.join(EXTRACT_KINDS)}) from ../shared/istio-crds/crd-all.gen.yaml, verbatim.\n"
    head += "# Rewritten by `UPDATE_CRDS=1 make test-istio`; tests/istio/test_manifests.py keeps it current.\n"
    return head + "---\n".join(keep)


@lru_cache(maxsize=None)
def crds() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the version's openAPIV3Schema."""
    out = {}
    with CRD_FILE.open(encoding="utf-8") as fh:
        for doc in yaml.load_all(fh, Loader=_Loader):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                if version.get("served", True):
                    out[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return out


def schema_for(api_version: str, kind: str) -> dict:
    try:
        return crds()[(api_version, kind)]
    except KeyError:
        raise KeyError(f"{CRD_FILE} has no served CRD for {api_version} {kind}") from None


# ------------------------------------------------------------ JSON Schema

def to_json_schema(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "description" or key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(s) for name, s in value.items()}
        elif key in ("additionalProperties", "items", "not"):
            out[key] = to_json_schema(value)
        elif key in ("oneOf", "anyOf", "allOf"):
            out[key] = [to_json_schema(s) for s in value]
        elif key == "format":
            if value in INT_BOUNDS:
                lo, hi = INT_BOUNDS[value]
                out.setdefault("minimum", lo)
                out.setdefault("maximum", hi)
            # other formats (date-time, ...) are annotations only
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in node:
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def root_schema(api_version: str, kind: str) -> dict:
    schema = to_json_schema(schema_for(api_version, kind))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema.setdefault("properties", {})
    schema["properties"].update({
        "apiVersion": {"const": api_version},
        "kind": {"const": kind},
        "metadata": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 253, "pattern": DNS_SUBDOMAIN},
                "namespace": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL},
                "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "required": ["name"],
            "additionalProperties": False,
        },
    })
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    schema["additionalProperties"] = False
    return schema


def schema_errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(root_schema(doc.get("apiVersion", ""), doc.get("kind", "")))
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


# ------------------------------------------------------------------- CEL

def _go_parse_request_uri_ok(s: str) -> bool:
    """Approximates Go url.ParseRequestURI: absolute URL or absolute path, no spaces/controls."""
    if not s or any(c.isspace() or ord(c) < 0x20 for c in s):
        return False
    parts = urlsplit(s)
    if parts.scheme:
        return bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", parts.scheme))
    return s.startswith("/")


def _url_scheme_ok(s: str) -> bool:
    schemes = ("", "http", "https", "oci", "file")
    if _go_parse_request_uri_ok(s):
        return urlsplit(s).scheme.lower() in schemes
    return _go_parse_request_uri_ok("http://" + s)


def _one_of_selector(self: dict, *fields: str) -> bool:
    return sum(1 for f in fields if f in self) <= 1


RULES: dict[str, Callable[[Any], bool]] = {
    # WasmPlugin spec
    '(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1':
        lambda s: _one_of_selector(s, "selector", "targetRef", "targetRefs"),
    # EnvoyFilter spec
    '(has(self.workloadSelector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1':
        lambda s: _one_of_selector(s, "workloadSelector", "targetRefs"),
    '!self.contains("*")': lambda s: "*" not in s,
    'self.all(key, !key.contains("*"))': lambda s: all("*" not in k for k in s),
    'self.all(key, key.size() != 0)': lambda s: all(len(k) != 0 for k in s),
    'self.size() == 0': lambda s: len(s) == 0,
    'isURL(self) ? (url(self).getScheme() in ["", "http", "https", "oci", "file"]) : (isURL("http://" + self) &&\n'
    'url("http://" + self).getScheme() in ["", "http", "https", "oci", "file"])': _url_scheme_ok,
    '(has(self.valueFrom) ? self.valueFrom : "") != "HOST" || !has(self.value)':
        lambda s: s.get("valueFrom", "") != "HOST" or "value" not in s,
    'has(self.context) ? ((self.context == "WAYPOINT") ? has(self.waypoint) : !has(self.waypoint)) : !has(self.waypoint)':
        lambda s: (("waypoint" in s) if s.get("context") == "WAYPOINT" else ("waypoint" not in s)),
    '0 < self && self <= 65535': lambda s: 0 < s <= 65535,
}


def _norm(rule: str) -> str:
    return " ".join(rule.split())


_RULES_NORM = {_norm(k): v for k, v in RULES.items()}


def cel_errors(schema: dict, value: Any, path: str = "") -> list[str]:
    """CEL rules and list-map key uniqueness of `schema`, applied to `value` and below."""
    errors: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        check = _RULES_NORM.get(_norm(rule["rule"]))
        if check is None:
            errors.append(f"{path or '<root>'}: CEL rule without a Python twin (add it to RULES): {rule['rule']!r}")
        elif not check(value):
            errors.append(f"{path or '<root>'}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            child = props.get(key) if key in props else (extra if isinstance(extra, dict) else None)
            if child is not None:
                errors += cel_errors(child, sub, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema.get("x-kubernetes-list-map-keys", [])
            seen = set()
            for i, item in enumerate(value):
                k = tuple(item.get(name) for name in keys) if isinstance(item, dict) else (item,)
                if k in seen:
                    errors.append(f"{path}[{i}]: duplicate entry for list-map key(s) {keys}={k}")
                seen.add(k)
        for i, item in enumerate(value):
            errors += cel_errors(schema["items"], item, f"{path}[{i}]")
    return errors


def validate(doc: dict) -> list[str]:
    """Every schema and CEL error of one manifest (empty list: the API server would accept it)."""
    try:
        schema = schema_for(doc.get("apiVersion", ""), doc.get("kind", ""))
    except KeyError as exc:
        return [str(exc)]
    return schema_errors(doc) + cel_errors(schema, doc)
