#!/usr/bin/env python3
"""Run the local demo stack: Redis, the demo services and two Envoy replicas,
each with every gateway and its own gateway-store sidecar.

    python3 envoy/stack.py run [--extra FILE] [--concurrency N] [--log-level L]

renders envoy/envoy.yaml.tmpl (profile `local`) into build/envoy/envoy.yaml
and, for the second replica (every listener port + 100, admin 9902, sidecar
18091), build/envoy/envoy-2.yaml; starts redis-server (127.0.0.1:16379, the
password of examples/keys/redis-password, data under the state directory),
one target/release/gateway-store per replica, target/release/demo-services
and one .venv/bin/envoy per replica; waits until each is ready (Redis
answers PING; the services printed their ready lines; Envoy's admin /ready
answers LIVE and every listener accepts TCP), prints the ports, and stays in
the foreground until Ctrl-C or SIGTERM, then stops every process group and
waits for them. `make run` builds everything first and calls this.

Each Envoy runs the dynamic form of the render (render.to_dynamic): its wasm
filters' configurations come by ECDS from watched files, so

    python3 envoy/stack.py reload [--override REL=FILE ...]     # make reload

pushes the current examples/config files into every running replica and
prints whether each accepted them (docs/operations.md, "Live configuration").

The same machinery is a Python API for the integration tests and the
benchmark (standard library only):

    from stack import Stack
    with Stack(log_dir=tmp) as stack:      # start() ... stop()
        stack.stop_demo_services()         # e.g. make the issuer unreachable
        stack.start_demo_services()

Every child runs in its own process group and gets SIGTERM if this process
dies, so neither `make run` nor a test run leaves an orphan behind.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Iterable, Mapping, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import render  # noqa: E402  (sibling module, stdlib only)

REPO = HERE.parent
ENVOY_BIN = REPO / ".venv" / "bin" / "envoy"
DEMO_SERVICES_BIN = REPO / "target" / "release" / "demo-services"
GATEWAY_STORE_BIN = REPO / "target" / "release" / "gateway-store"
REDIS_SERVER_BIN = Path(os.environ.get("REDIS_SERVER", "redis-server"))
DEFAULT_CONFIG = REPO / "build" / "envoy" / "envoy.yaml"
# `make build-native-module`: libgateway_native.so, the native build's module.
NATIVE_DIR = REPO / "build" / "native"
DEFAULT_STATE_DIR = REPO / "build" / "stack"
REDIS_PASSWORD_FILE = REPO / "examples" / "keys" / "redis-password"
#: The demo OIDC provider's signing key and its client's secret (absolute
#: paths, so the stack runs from any current directory).
OIDC_KEY_FILE = REPO / "examples" / "keys" / "oidc-rs256.pem"
OIDC_CLIENT_SECRET_FILE = REPO / "examples" / "keys" / "oidc-client-secret"

HOST = "127.0.0.1"
#: Gateway listeners of the contract (../shared/demo-contract.md).
LISTENERS: dict[str, int] = {"web": 10000, "app": 10001, "egress": 10002, "secure": 10443,
                             "internal": 10444, "bare": 10009}
#: Gateways served over TLS with the demo server certificate (issued for
#: localhost): https://localhost:PORT.
TLS_GATEWAYS = frozenset({"secure", "internal"})
ADMIN_PORT = 9901
#: Demo services, one binary, consecutive ports from SERVICES_BASE_PORT.
SERVICES: dict[str, int] = {"echo": 18080, "issuer": 18081, "fds": 18082, "partner": 18083, "oidc": 18084}
SERVICES_BASE_PORT = 18080
DEMO_READY_LINE = "demo-services ready"
#: Replicas of every gateway (render.py --replica): replica r serves on
#: render.replica_port(port, r).
REPLICAS = render.REPLICAS
REDIS_PORT = 16379
#: The gateway-store sidecar of replica 1 (replica 2: 18091).
STORE_PORT = render.STORE_PORT
#: The key namespaces the filters' `shared_store` sections use.
STORE_NAMESPACES = ("web.jwt", "app.replay-guard", "internal.oidc")
#: The ACL user the sidecars log in as (docs/gateway-store.md): its keys
#: only, its commands only.
STORE_REDIS_USER = "gateway-store"
STORE_ACL = "~gw:* resetchannels -@all +set +get +getex +getdel +del +ping +eval"

REDIS_START_TIMEOUT = 20.0
DEMO_START_TIMEOUT = 20.0
ENVOY_START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class StackError(Exception):
    """The stack could not start (port taken, binary missing, child died...)."""


# --------------------------------------------------------------------------- helpers

def _load_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: process groups still apply
        return None


# Resolved once in the parent: the child, between fork and exec, only calls it.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal() -> None:
    """In the child, before exec: get SIGTERM when the parent dies (Linux)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on host:port (bind with SO_REUSEADDR fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def check_ports_free(ports: Mapping[str, int], host: str = HOST) -> None:
    taken = [f"{host}:{port} ({name})" for name, port in ports.items() if port_in_use(host, port)]
    if taken:
        raise StackError(
            "port(s) already in use: " + ", ".join(taken)
            + ". Is another stack (make run, a test run) still up? Stop it first"
            " (e.g. `ss -ltnp` shows who holds the port)."
        )


def tcp_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET; status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback only)
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def redis_command(*args: str, password: str | None = None, host: str = HOST, port: int = REDIS_PORT,
                  user: str = "default", timeout: float = 2.0) -> bytes:
    """Send one Redis command (after AUTH when `password` is given) and return
    the raw first line of its reply (b"+PONG", b"-ERR ...", b":1", b"$..."):
    enough for the stack's and the tests' few commands, standard library only.
    Raises OSError when Redis does not answer."""
    def encode(parts: Sequence[str]) -> bytes:
        out = [f"*{len(parts)}\r\n".encode()]
        for part in parts:
            raw = part.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        return b"".join(out)

    with socket.create_connection((host, port), timeout=timeout) as conn:
        reader = conn.makefile("rb")
        if password is not None:
            conn.sendall(encode(["AUTH", user, password]))
            line = reader.readline()
            if not line.startswith(b"+OK"):
                raise OSError(f"redis AUTH refused: {line.strip()!r}")
        conn.sendall(encode(list(args)))
        line = reader.readline()
        if not line:
            raise OSError("redis closed the connection")
        return line.rstrip(b"\r\n")


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


class _Child:
    """One child process in its own process group, its output pumped to a sink."""

    def __init__(self, name: str, argv: Sequence[str], stdout: IO[str] | None,
                 stderr: IO[str] | None, ready_line: str | None = None, cwd: Path = REPO,
                 env: Mapping[str, str] | None = None):
        self.name = name
        self.ready = threading.Event()
        self._ready_line = ready_line
        self._sink = stdout
        self._pump: threading.Thread | None = None
        pipe_stdout = ready_line is not None
        self.proc = subprocess.Popen(  # noqa: S603 (fixed argv)
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdout else stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=_set_parent_death_signal,  # noqa: PLW1509 (no threads touch the child)
        )
        if pipe_stdout:
            self._pump = threading.Thread(target=self._pump_stdout, name=f"{name}-stdout", daemon=True)
            self._pump.start()
        else:
            self.ready.set()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            if self._sink is not None:
                try:
                    self._sink.write(line)
                    self._sink.flush()
                except (ValueError, OSError):  # sink closed during shutdown
                    pass
            if self._ready_line and line.strip() == self._ready_line:
                self.ready.set()
        self.proc.stdout.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM the process group, wait, SIGKILL it if it lingers."""
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:
            # The leader is gone; make sure nothing else of its group survived.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._pump is not None:
            self._pump.join(timeout=timeout)
        return self.proc.returncode


# --------------------------------------------------------------------------- the stack

class Stack:
    """Redis, the demo services and the Envoy replicas running the rendered
    local config, each replica with its gateway-store sidecar.

    log_dir: where the children's output goes (envoy.log: Envoy's own log incl.
      wasm logs; envoy-access.log: the JSON access log; envoy-2.log and
      envoy-access-2.log: the same of replica 2; demo-services.log, redis.log,
      gateway-store.log, gateway-store-2.log).
      None: inherit this process's stdout/stderr (the foreground `run`).
    replicas: how many Envoy replicas to run (1 or 2; the contract's stack
      has 2; the benchmark runs 1).
    state_dir: Redis's data directory lives under it (default: log_dir, else
      build/stack): a test session starts with an empty Redis, `make run`
      keeps what it claimed (until each claim's TTL) across restarts.
    extra_listeners / extra_clusters: files spliced into the template (see
      render.py), e.g. the benchmark's extra listeners.
    overrides: profile variables to replace (render.py --set).
    envoy_args: appended to Envoy's command line.
    dynamic: True (the default): Envoy runs the dynamic form of the render
      (render.to_dynamic): every wasm filter's configuration comes by ECDS
      from a watched file under ecds_dir_of(replica), so reload() changes it
      in the running Envoys. False: the static form, config_path_of(replica).
      Either way config_path_of(replica) holds the static render (what
      `gatewayctl drift --rendered` compares with).
    wasm_build: "filters", "suite", "chain" or "native" (render.py); None:
      $WASM_BUILD when the stack renders, else "filters".
    environment: variables to add to Envoy's process environment, e.g. the
      secrets of native filter blocks an extra listener file carries (the
      bench's). The native build's own converted blocks need theirs too
      (render.to_native_env): the stack adds those itself. A name that two
      of them would set to different values is a StackError (one process,
      one environment).
    """

    def __init__(
        self,
        extra_listeners: Iterable[os.PathLike[str] | str] | None = None,
        extra_clusters: Iterable[os.PathLike[str] | str] | None = None,
        envoy_args: Sequence[str] = (),
        *,
        overrides: Mapping[str, str] | None = None,
        include_root: os.PathLike[str] | str | None = None,
        config_path: os.PathLike[str] | str = DEFAULT_CONFIG,
        log_dir: os.PathLike[str] | str | None = None,
        concurrency: int = 2,
        log_level: str = "warn",
        component_log_level: str = "wasm:info,dynamic_modules:info",
        envoy_bin: os.PathLike[str] | str = ENVOY_BIN,
        demo_services_bin: os.PathLike[str] | str = DEMO_SERVICES_BIN,
        replicas: int = 2,
        state_dir: os.PathLike[str] | str | None = None,
        gateway_store_bin: os.PathLike[str] | str = GATEWAY_STORE_BIN,
        redis_server_bin: os.PathLike[str] | str = REDIS_SERVER_BIN,
        dynamic: bool = True,
        wasm_build: str | None = None,
        environment: Mapping[str, str] | None = None,
        redis_maxmemory: str = "64mb",
    ):
        self.redis_maxmemory = redis_maxmemory
        self.extra_listeners = list(extra_listeners or [])
        self.extra_clusters = list(extra_clusters or [])
        self.envoy_args = list(envoy_args)
        self.overrides = dict(overrides or {})
        self.include_root = Path(include_root) if include_root else render.DEFAULT_INCLUDE_ROOT
        self.config_path = Path(config_path)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.concurrency = concurrency
        self.log_level = log_level
        self.component_log_level = component_log_level
        self.envoy_bin = Path(envoy_bin)
        self.demo_services_bin = Path(demo_services_bin)
        self.host = self.overrides.get("LISTEN_ADDR", HOST)
        if replicas not in REPLICAS:
            raise StackError(f"replicas must be one of {REPLICAS}, got {replicas}")
        self.replicas = tuple(r for r in REPLICAS if r <= replicas)
        self.state_dir = Path(state_dir) if state_dir else (self.log_dir or DEFAULT_STATE_DIR)
        self.gateway_store_bin = Path(gateway_store_bin)
        self.redis_server_bin = Path(redis_server_bin)
        self._envoys: dict[int, _Child] = {}
        self._stores: dict[int, _Child] = {}
        self._redis: _Child | None = None
        self._demo: _Child | None = None
        self._files: list[IO[str]] = []
        self._atexit_registered = False
        self.dynamic = dynamic
        self.wasm_build = wasm_build
        self.environment = dict(environment or {})
        #: What Envoy's environment gets on top of this process's: `environment`
        #: and the native blocks' variables (set by render()).
        self.envoy_environment: dict[str, str] = dict(self.environment)
        #: After reload(): per replica, ECDS resource -> "accepted"/"rejected",
        #: and the Envoy log lines of a refusal (when log_dir is known).
        self.last_reload: dict[int, dict[str, str]] = {}
        self.last_reload_log: dict[int, list[str]] = {}

    # ---- paths of the logs (None in the foreground mode)
    @staticmethod
    def _suffix(replica: int) -> str:
        return "" if replica == 1 else f"-{replica}"

    def envoy_log_of(self, replica: int) -> Path | None:
        return self.log_dir / f"envoy{self._suffix(replica)}.log" if self.log_dir else None

    def access_log_of(self, replica: int) -> Path | None:
        return self.log_dir / f"envoy-access{self._suffix(replica)}.log" if self.log_dir else None

    @property
    def envoy_log(self) -> Path | None:
        return self.envoy_log_of(1)

    @property
    def access_log(self) -> Path | None:
        return self.access_log_of(1)

    @property
    def redis_log(self) -> Path | None:
        return self.log_dir / "redis.log" if self.log_dir else None

    def config_path_of(self, replica: int) -> Path:
        if replica == 1:
            return self.config_path
        return self.config_path.with_name(f"{self.config_path.stem}{self._suffix(replica)}{self.config_path.suffix}")

    def live_config_path_of(self, replica: int) -> Path:
        """The bootstrap Envoy runs in the dynamic form (build/envoy/envoy.live.yaml)."""
        static = self.config_path_of(replica)
        return static.with_name(f"{static.stem}.live{static.suffix}")

    def ecds_dir_of(self, replica: int) -> Path:
        """The watched ECDS files of replica `replica` (build/envoy/ecds, ecds-2)."""
        return (self.config_path.parent / f"ecds{self._suffix(replica)}").resolve()

    @property
    def state_file(self) -> Path:
        """What the stack was rendered with (JSON), so that `stack.py reload`
        in another process renders the same way."""
        return self.config_path.with_name(f"{self.config_path.stem}.stack.json")

    @property
    def demo_services_log(self) -> Path | None:
        return self.log_dir / "demo-services.log" if self.log_dir else None

    # ---- URLs
    def url(self, gateway: str, path: str = "/", replica: int = 1) -> str:
        scheme = "https" if gateway in TLS_GATEWAYS else "http"
        host = "localhost" if gateway in TLS_GATEWAYS else self.host  # the server cert names localhost
        return f"{scheme}://{host}:{render.replica_port(LISTENERS[gateway], replica)}{path}"

    def admin_url(self, path: str = "/", replica: int = 1) -> str:
        return f"http://{self.host}:{render.replica_port(ADMIN_PORT, replica)}{path}"

    def ports(self) -> dict[str, int]:
        """Every port this stack binds, by name."""
        ports = {"redis": REDIS_PORT, **SERVICES}
        for r in self.replicas:
            tag = "" if r == 1 else f" (replica {r})"
            ports[f"admin{tag}"] = render.replica_port(ADMIN_PORT, r)
            ports[f"gateway-store{tag}"] = render.replica_port(STORE_PORT, r)
            for name, port in LISTENERS.items():
                ports[f"{name}{tag}"] = render.replica_port(port, r)
        return ports

    # ---- lifecycle
    def __enter__(self) -> "Stack":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _render_text(self, replica: int, include_overrides: Mapping[str, Path] | None = None,
                     environment: dict[str, str] | None = None) -> str:
        return render.render(
            "local",
            overrides=self.overrides,
            extra_listeners=self.extra_listeners,
            extra_clusters=self.extra_clusters,
            include_root=self.include_root,
            wasm_build=self.wasm_build,
            replica=replica,
            include_overrides=include_overrides,
            environment=environment,
        )

    def _dynamic_form(self, replica: int, text: str) -> tuple[str, dict[str, str]]:
        boot, files = render.to_dynamic(text, self.ecds_dir_of(replica), node_id=f"demo-gateway-{replica}")
        return render.dynamic_header(text) + boot, files

    def render(self) -> Path:
        """Render every replica's config: the static form at config_path_of(r)
        and, when dynamic, the bootstrap Envoy runs and its ECDS files.
        Returns config_path (replica 1's static form)."""
        self.wasm_build = self.wasm_build or os.environ.get("WASM_BUILD") or "filters"
        env = dict(self.environment)
        for r in self.replicas:
            native_env: dict[str, str] = {}
            text = self._render_text(r, environment=native_env)
            clash = render.merge_environment(env, native_env)
            if clash:
                raise render.RenderError(
                    f"the native filter blocks need {', '.join(clash)} in Envoy's environment with another "
                    "value than the stack's `environment` gives")
            render.write(self.config_path_of(r), text)
            if self.dynamic:
                boot, files = self._dynamic_form(r, text)
                ecds = self.ecds_dir_of(r)
                if ecds.is_dir():  # files of another build's render must not linger
                    for old in ecds.glob("*.json"):
                        if old.name not in files:
                            old.unlink()
                render.write_dynamic(self.live_config_path_of(r), ecds, boot, files)
        self.envoy_environment = env
        render.write(self.state_file, json.dumps({
            "wasm_build": self.wasm_build,
            "dynamic": self.dynamic,
            "replicas": len(self.replicas),
            "overrides": self.overrides,
            "include_root": str(self.include_root),
            "extra_listeners": [str(Path(p).resolve()) for p in self.extra_listeners],
            "extra_clusters": [str(Path(p).resolve()) for p in self.extra_clusters],
            "log_dir": str(self.log_dir.resolve()) if self.log_dir else None,
        }, indent=1) + "\n")
        return self.config_path

    @classmethod
    def from_state(cls, config_path: os.PathLike[str] | str = DEFAULT_CONFIG) -> "Stack":
        """A handle on the stack rendered at `config_path` (by `make run` or a
        test session in another process): same render inputs, nothing started.
        Enough for reload() and admin()."""
        config_path = Path(config_path)
        state = config_path.with_name(f"{config_path.stem}.stack.json")
        try:
            saved = json.loads(state.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StackError(f"no stack rendered at {config_path} ({state}: {exc}); is `make run` up?") from exc
        return cls(
            extra_listeners=saved["extra_listeners"],
            extra_clusters=saved["extra_clusters"],
            overrides=saved["overrides"],
            include_root=saved["include_root"],
            config_path=config_path,
            replicas=saved["replicas"],
            dynamic=saved["dynamic"],
            wasm_build=saved["wasm_build"],
            log_dir=saved.get("log_dir"),
        )

    # ---- live configuration (ECDS)
    def ecds_stats(self, replica: int = 1) -> dict[str, dict[str, int]]:
        """ECDS resource -> its counters (update_success, update_rejected,
        config_fail, ...) from replica `replica`'s admin /stats; {} when the
        admin does not answer."""
        status, body = self.admin("/stats?format=json&filter=" + urllib.parse.quote(r"^extension_config_discovery\.http_filter\."),
                                  replica)
        if status != 200:
            return {}
        prefix = "extension_config_discovery.http_filter."
        out: dict[str, dict[str, int]] = {}
        for stat in json.loads(body).get("stats", []):
            name, value = stat.get("name", ""), stat.get("value")
            if not name.startswith(prefix) or not isinstance(value, int):
                continue
            resource, _, counter = name[len(prefix):].rpartition(".")
            out.setdefault(resource, {})[counter] = value
        return out

    def ecds_read_versions(self, replica: int = 1) -> dict[str, str]:
        """ECDS resource -> the version replica `replica` read last, from its
        config_dump ({} when the admin does not answer). After a refusal that
        is the refused version: Envoy's dump shows what it read, the stat
        extension_config_discovery.http_filter.<name>.version_text what runs."""
        status, body = self.admin("/config_dump?resource=ecds_filters", replica)
        if status != 200:
            return {}
        out = {}
        for entry in json.loads(body).get("configs", []):
            name = entry.get("ecds_filter", {}).get("name")
            if name:
                out[name] = entry.get("version_info", "")
        return out

    def _log_size(self, replica: int) -> int:
        log = self.envoy_log_of(replica)
        try:
            return log.stat().st_size if log is not None else 0
        except OSError:
            return 0

    def _refusal_lines(self, replica: int, offset: int) -> list[str]:
        """Envoy's log lines since `offset` that say why a config was refused
        (the filter's own "invalid config at `field`" line, Envoy's verdict)."""
        log = self.envoy_log_of(replica)
        if log is None:
            return []
        try:
            with open(log, encoding="utf-8", errors="replace") as fh:
                fh.seek(offset)
                text = fh.read()
        except OSError:
            return []
        keep = ("invalid config", "config update rejected", "Unable to create Wasm")
        return [line for line in text.splitlines() if any(k in line for k in keep)]

    def envoy_ready(self, replica: int = 1) -> bool:
        """Replica `replica`'s admin answers /ready with LIVE (started by this
        object or not)."""
        status, body = http_get(self.admin_url("/ready", replica), timeout=1.0)
        return status == 200 and body.strip() == b"LIVE"

    def reload(self, overrides: Mapping[str, os.PathLike[str] | str] | None = None,
               timeout: float = 10.0) -> dict[int, str]:
        """Re-render the filters' configurations from the include root
        (examples/), with `overrides` (REL under the include root, e.g.
        "config/sanitize/web.json" -> a file read instead), and push them into
        every replica: each changed ECDS file is replaced atomically, Envoy
        re-reads it and builds the filter anew (in-flight requests finish on
        the old one; no listener drains).

        Returns, per replica, "accepted" (every changed filter config applied,
        or nothing changed), "rejected" (Envoy refused at least one: the
        filter's on_configure returned false; the old config keeps serving,
        extension_config_discovery.http_filter.<name>.update_rejected moved,
        and Envoy's log names the field) or "not running" (admin not ready:
        the files are written, the replica reads them when it starts). It
        waits for the stats to move (polling, up to `timeout` seconds per
        reload; StackError if they do not). A rejected file is put back to
        the last accepted one, so a replica restarted later starts with what
        runs; the static render (config_path_of) keeps what was asked for, so
        `gatewayctl drift --rendered` shows the difference. Per filter
        outcomes: self.last_reload.

        Only the wasm filters' configurations are live: when anything else of
        the render differs from what runs (listeners, routes, clusters), it
        raises StackError (restart the stack for that)."""
        if not self.dynamic:
            raise StackError("this stack runs the static form (dynamic=False): restart it to change a config")
        swaps = {str(rel): Path(f) for rel, f in (overrides or {}).items()}
        plans: dict[int, tuple[str, dict[str, str], dict[str, str]]] = {}
        for r in self.replicas:
            try:
                text = self._render_text(r, swaps)
                boot, files = self._dynamic_form(r, text)
            except render.RenderError as exc:
                raise StackError(f"cannot render the Envoy config: {exc}") from exc
            live = self.live_config_path_of(r)
            try:
                running_boot = live.read_text(encoding="utf-8")
            except OSError as exc:
                raise StackError(f"{live}: {exc.strerror}; start the stack first") from exc
            if running_boot != boot:
                raise StackError(
                    f"replica {r}: the render differs from what {live} runs beyond the wasm filters' "
                    "configurations (listeners, routes, clusters, or the wasm build): restart the stack "
                    "to apply that; reload pushes filter configurations only")
            old, new = {}, {}
            # What the replica read last (after a refusal: the refused
            # config, while the file already holds the running one again).
            read = self.ecds_read_versions(r)
            for fname, doc in files.items():
                try:
                    current = (self.ecds_dir_of(r) / fname).read_text(encoding="utf-8")
                except OSError:
                    current = ""
                name = fname[: -len(".json")]
                if current != doc or read.get(name, json.loads(doc)["version_info"]) != json.loads(doc)["version_info"]:
                    old[fname], new[fname] = current, doc
            plans[r] = (text, old, new)
        # Everything rendered: push. Counters first, so a move is ours.
        names = {fname: fname[: -len(".json")] for _, _, new in plans.values() for fname in new}
        log_sizes = {r: self._log_size(r) for r in self.replicas}
        before = {r: self.ecds_stats(r) for r in self.replicas}
        running = {r: bool(before[r]) and self.envoy_ready(r) for r in self.replicas}
        for r, (text, _, new) in plans.items():
            render.write(self.config_path_of(r), text)
            for fname, doc in sorted(new.items()):
                render.write(self.ecds_dir_of(r) / fname, doc)
        outcome: dict[int, dict[str, str]] = {r: {} for r in self.replicas}
        deadline = time.monotonic() + timeout
        while True:
            waiting = []
            for r, (_, _, new) in plans.items():
                if not running[r]:
                    continue
                now = self.ecds_stats(r)
                for fname in new:
                    name = names[fname]
                    if name in outcome[r]:
                        continue
                    was, cur = before[r].get(name, {}), now.get(name, {})
                    if cur.get("update_rejected", 0) > was.get("update_rejected", 0):
                        outcome[r][name] = "rejected"
                    elif cur.get("update_success", 0) > was.get("update_success", 0):
                        outcome[r][name] = "accepted"
                    else:
                        waiting.append(f"replica {r}: {name}")
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise StackError(f"no ECDS update seen after {timeout:.0f}s: {', '.join(waiting)}")
            time.sleep(0.05)
        # A refused file goes back to the last accepted config, so the
        # watched files always hold what runs and a restarted replica comes
        # back with it. Written in place, not renamed: Envoy reacts only to a
        # file moved onto the path, so the running replica, which already
        # runs that config, sees no second update (the stats show one push,
        # one rejection).
        for r, (_, old, _) in plans.items():
            for name, verdict in outcome[r].items():
                fname = render.ecds_file(name)
                if verdict == "rejected" and old.get(fname):
                    with open(self.ecds_dir_of(r) / fname, "w", encoding="utf-8") as fh:
                        fh.write(old[fname])
                        fh.flush()
                        os.fsync(fh.fileno())
        self.last_reload = outcome
        self.last_reload_log = {r: self._refusal_lines(r, log_sizes[r]) for r in self.replicas
                                if "rejected" in outcome[r].values()}
        return {r: ("not running" if not running[r]
                    else "rejected" if "rejected" in outcome[r].values() else "accepted")
                for r in self.replicas}

    def start(self) -> "Stack":
        for path, hint in ((self.envoy_bin, "make venv"), (self.demo_services_bin, "make build"),
                           (self.gateway_store_bin, "make build")):
            if not path.exists():
                raise StackError(f"{path} is missing: run `{hint}` (or `make run`, which does both)")
        if shutil.which(str(self.redis_server_bin)) is None:
            raise StackError(f"{self.redis_server_bin} is not installed: run `make redis` (or `make run`, which does it)")
        if not REDIS_PASSWORD_FILE.exists():
            raise StackError(f"{REDIS_PASSWORD_FILE} is missing: run examples/gen-demo-material.sh")
        check_ports_free(self.ports(), self.host)
        try:
            self.render()
        except render.RenderError as exc:
            raise StackError(f"cannot render the Envoy config: {exc}") from exc
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            self.start_redis()
            for r in self.replicas:
                self.start_store(r)
            self.start_demo_services()
            for r in self.replicas:
                self.start_envoy(r)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the Envoys, the demo services, the sidecars and Redis; wait
        for each. Idempotent."""
        for r in list(self._envoys):
            self.stop_envoy(r)
        self.stop_demo_services()
        for r in list(self._stores):
            self.stop_store(r)
        self.stop_redis()
        for f in self._files:
            f.close()
        self._files.clear()

    def _open_log(self, name: str) -> IO[str] | None:
        if self.log_dir is None:
            return None
        f = open(self.log_dir / name, "a", encoding="utf-8")  # noqa: SIM115 (closed in stop())
        self._files.append(f)
        return f

    # ---- redis
    @property
    def redis_password(self) -> str:
        return REDIS_PASSWORD_FILE.read_text(encoding="ascii").strip()

    def _redis_conf(self) -> Path:
        """redis.conf for the demo: loopback only, the demo password, the
        sidecars' narrow ACL user, append-only persistence in the state
        directory, and no eviction (a full Redis refuses new claims, which
        the filters answer with 503, instead of forgetting old ones early)."""
        data = self.state_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        pw = self.redis_password
        conf = data / "redis.conf"
        conf.write_text("\n".join([
            "# GENERATED by envoy/stack.py (demo only)",
            f"bind {HOST}",
            f"port {REDIS_PORT}",
            "protected-mode yes",
            "daemonize no",
            f"dir {data}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            f"maxmemory {self.redis_maxmemory}",
            "maxmemory-policy noeviction",
            'logfile ""',
            f"user default on >{pw} ~* &* +@all",
            f"user {STORE_REDIS_USER} on >{pw} {STORE_ACL}",
            "",
        ]), encoding="ascii")
        conf.chmod(0o600)
        return conf

    def redis(self, *args: str, timeout: float = 2.0) -> bytes:
        """One Redis command as the `default` user (redis_command)."""
        return redis_command(*args, password=self.redis_password, host=HOST, timeout=timeout)

    def start_redis(self, timeout: float = REDIS_START_TIMEOUT) -> None:
        """Start redis-server and wait until it answers PING."""
        if self._redis is not None and self._redis.alive():
            return
        check_ports_free({"redis": REDIS_PORT}, HOST)
        sink = self._open_log("redis.log") if self.log_dir else None
        self._redis = _Child("redis", [str(self.redis_server_bin), str(self._redis_conf())],
                             stdout=sink, stderr=sink)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.redis("PING", timeout=0.5) == b"+PONG":
                    return
            except OSError:
                pass
            if not self._redis.alive() or time.monotonic() > deadline:
                code = self._redis.stop()
                self._redis = None
                raise StackError(f"redis-server did not start (exit code {code})\n{_tail(self.redis_log)}".rstrip())
            time.sleep(0.05)

    def stop_redis(self) -> None:
        if self._redis is not None:
            self._redis.stop()
            self._redis = None

    def redis_running(self) -> bool:
        return self._redis is not None and self._redis.alive()

    # ---- gateway-store sidecars (one per replica)
    def store_url(self, path: str = "/", replica: int = 1) -> str:
        return f"http://{HOST}:{render.replica_port(STORE_PORT, replica)}{path}"

    def start_store(self, replica: int = 1, timeout: float = DEMO_START_TIMEOUT) -> None:
        """Start replica `replica`'s gateway-store and wait for its ready line."""
        child = self._stores.get(replica)
        if child is not None and child.alive():
            return
        port = render.replica_port(STORE_PORT, replica)
        check_ports_free({f"gateway-store {replica}": port}, HOST)
        name = f"gateway-store{self._suffix(replica)}"
        sink = self._open_log(f"{name}.log") if self.log_dir else sys.stdout
        argv = [str(self.gateway_store_bin), "--listen", f"{HOST}:{port}",
                "--redis-url", f"redis://{HOST}:{REDIS_PORT}", "--redis-user", STORE_REDIS_USER,
                "--redis-password-file", str(REDIS_PASSWORD_FILE)]
        for ns in STORE_NAMESPACES:
            argv += ["--namespace", ns]
        child = _Child(name, argv, stdout=sink, stderr=sink if self.log_dir else None,
                       ready_line=f"gateway-store ready on {HOST}:{port}")
        self._stores[replica] = child
        deadline = time.monotonic() + timeout
        while not child.ready.wait(0.05):
            exited = not child.alive()
            if exited or time.monotonic() > deadline:
                code = child.stop()
                del self._stores[replica]
                why = f"exited with code {code}" if exited else f"not ready after {timeout:.0f}s"
                log = self.log_dir / f"{name}.log" if self.log_dir else None
                raise StackError(f"{name} {why}\n{_tail(log)}".rstrip())

    def stop_store(self, replica: int = 1) -> None:
        child = self._stores.pop(replica, None)
        if child is not None:
            child.stop()

    def store_running(self, replica: int = 1) -> bool:
        child = self._stores.get(replica)
        return child is not None and child.alive()

    # ---- demo services
    def start_demo_services(self, timeout: float = DEMO_START_TIMEOUT) -> None:
        """Start the demo services (all five) and wait for their ready line."""
        if self._demo is not None and self._demo.alive():
            return
        check_ports_free(SERVICES, self.host)
        sink = self._open_log("demo-services.log") if self.log_dir else sys.stdout
        self._demo = _Child(
            "demo-services",
            [str(self.demo_services_bin), "--bind-host", self.host, "--base-port", str(SERVICES_BASE_PORT),
             "--oidc-key", str(OIDC_KEY_FILE), "--oidc-client-secret-file", str(OIDC_CLIENT_SECRET_FILE)],
            stdout=sink,
            stderr=sink if self.log_dir else None,
            ready_line=DEMO_READY_LINE,
        )
        deadline = time.monotonic() + timeout
        while not self._demo.ready.wait(0.05):
            exited = not self._demo.alive()
            if exited or time.monotonic() > deadline:
                code = self._demo.stop()
                self._demo = None
                why = f"exited with code {code}" if exited else f"not ready after {timeout:.0f}s"
                raise StackError(f"demo-services {why}\n{_tail(self.demo_services_log)}".rstrip())

    def stop_demo_services(self) -> None:
        """Stop the demo services (echo, issuer, FDS, partner, OIDC) and wait for them."""
        if self._demo is not None:
            self._demo.stop()
            self._demo = None

    def demo_services_running(self) -> bool:
        return self._demo is not None and self._demo.alive()

    # ---- envoy
    def envoy_command(self, replica: int = 1) -> list[str]:
        config = self.live_config_path_of(replica) if self.dynamic else self.config_path_of(replica)
        return [
            str(self.envoy_bin),
            "-c", str(config),
            "--concurrency", str(self.concurrency),
            "--log-level", self.log_level,
            *(["--component-log-level", self.component_log_level] if self.component_log_level else []),
            # No shared memory: a test stack and `make run` must not collide
            # on the hot-restart base id, nor the two replicas.
            "--disable-hot-restart",
            *self.envoy_args,
        ]

    def start_envoy(self, replica: int = 1, timeout: float = ENVOY_START_TIMEOUT) -> None:
        """Start replica `replica`'s Envoy (its config must be rendered) and
        wait until it is ready and every listener accepts."""
        # The native build's DynamicModuleFilter blocks name the module
        # (gateway_native); Envoy finds lib<name>.so on this path (inherited).
        os.environ.setdefault("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", str(NATIVE_DIR))
        child = self._envoys.get(replica)
        if child is not None and child.alive():
            return
        sfx = self._suffix(replica)
        child = _Child(
            f"envoy{sfx}",
            self.envoy_command(replica),
            stdout=self._open_log(f"envoy-access{sfx}.log"),
            stderr=self._open_log(f"envoy{sfx}.log"),
            # The native filters' secrets (render.to_native_env): a dynamic
            # module reads Envoy's own environment, not a VM's.
            env={**os.environ, **self.envoy_environment} if self.envoy_environment else None,
        )
        self._envoys[replica] = child
        deadline = time.monotonic() + timeout

        def fail(why: str) -> StackError:
            code = child.stop()
            self._envoys.pop(replica, None)
            log = _tail(self.envoy_log_of(replica))
            name = "envoy" if replica == 1 else f"envoy replica {replica}"
            return StackError(f"{name} {why}" + (f" (exit code {code})" if code else "") + (f"\n{log}" if log else ""))

        while True:
            if not child.alive():
                raise fail("exited during start-up")
            status, body = http_get(self.admin_url("/ready", replica), timeout=1.0)
            if status == 200 and body.strip() == b"LIVE":
                break
            if time.monotonic() > deadline:
                raise fail(f"not ready after {timeout:.0f}s (admin /ready: {status} {body[:80]!r})")
            time.sleep(0.05)
        ports = self.listener_ports(replica)
        while True:
            waiting = [p for p in ports if not tcp_accepts(self.host, p)]
            if not waiting:
                break
            if not child.alive():
                raise fail("exited during start-up")
            if time.monotonic() > deadline:
                raise fail(f"listener port(s) {waiting} not accepting after {timeout:.0f}s")
            time.sleep(0.05)
        if self.dynamic:
            # A refused ECDS file does not stop Envoy: its filter would be
            # missing (500 extension_config_missing). Refuse to call that started.
            refused = sorted(name for name, c in self.ecds_stats(replica).items()
                             if c.get("update_rejected", 0) or not c.get("update_success", 0))
            if refused:
                raise fail(f"refused the filter configuration(s) of {', '.join(refused)} "
                           f"(ECDS files under {self.ecds_dir_of(replica)})")

    def _start_envoy(self, timeout: float = ENVOY_START_TIMEOUT) -> None:
        self.start_envoy(1, timeout)

    def stop_envoy(self, replica: int = 1) -> None:
        child = self._envoys.pop(replica, None)
        if child is not None:
            child.stop()

    def restart_envoy(self, replica: int = 1) -> None:
        """Stop replica `replica`'s Envoy and start it again (same config):
        what it kept in its own memory (shared data, caches) is gone."""
        self.stop_envoy(replica)
        self.start_envoy(replica)

    def listener_ports(self, replica: int = 1) -> list[int]:
        """Ports of every listener Envoy reports (contract ones + extras)."""
        status, body = http_get(self.admin_url("/listeners?format=json", replica))
        ports = {render.replica_port(p, replica) for p in LISTENERS.values()}
        if status == 200:
            for listener in json.loads(body).get("listener_statuses", []):
                port = listener.get("local_address", {}).get("socket_address", {}).get("port_value")
                if port:
                    ports.add(int(port))
        return sorted(ports)

    def envoy_pid(self, replica: int = 1) -> int:
        """The process id of replica `replica`'s Envoy (it must be running)."""
        child = self._envoys.get(replica)
        if child is None:
            raise StackError(f"envoy replica {replica} is not running")
        return child.proc.pid

    def store_pid(self, replica: int = 1) -> int:
        child = self._stores.get(replica)
        if child is None:
            raise StackError(f"gateway-store {replica} is not running")
        return child.proc.pid

    def redis_pid(self) -> int:
        if self._redis is None:
            raise StackError("redis is not running")
        return self._redis.proc.pid

    def envoy_running(self, replica: int = 1) -> bool:
        child = self._envoys.get(replica)
        return child is not None and child.alive()

    def admin(self, path: str, replica: int = 1) -> tuple[int, bytes]:
        """GET an Envoy admin endpoint, e.g. admin('/stats?filter=wasm')."""
        return http_get(self.admin_url(path, replica))

    def banner(self) -> str:
        rows = [
            ("web", "http", LISTENERS["web"], "public gateway"),
            ("app", "http", LISTENERS["app"], "app gateway (signed requests)"),
            ("egress", "http", LISTENERS["egress"], "egress toward the partner"),
            ("secure", "https", LISTENERS["secure"], "mTLS gateway (client cert from examples/certs)"),
            ("internal", "https", LISTENERS["internal"], "internal tools (TLS, no client cert)"),
            ("bare", "http", LISTENERS["bare"], "web routes, no wasm filter (baseline)"),
            ("admin", "http", ADMIN_PORT, "Envoy admin"),
        ]
        lines = ["", "demo stack ready (Ctrl-C stops it)", ""]
        for r in self.replicas:
            if len(self.replicas) > 1:
                lines.append(f"  Envoy replica {r}:")
            for name, scheme, port, what in rows:
                host = "localhost" if scheme == "https" else self.host
                if name == "internal":
                    # where a person starts: the browser login (oidc filter)
                    port = render.replica_port(port, r)
                    lines.append(f"  {name:<8} {scheme}://{host}:{port}/ (SSO: log in as alice / alice-password)"
                                 f" {what}")
                    continue
                lines.append(f"  {name:<8} {scheme}://{host}:{render.replica_port(port, r):<6} {what}")
            store = render.replica_port(STORE_PORT, r)
            lines.append(f"  {'store':<8} http://{HOST}:{store:<6} gateway-store sidecar (Redis claims and sessions)")
            lines.append("")
        lines.append(f"  {'redis':<8} redis://{HOST}:{REDIS_PORT:<5} shared state (password: examples/keys/redis-password)")
        for name, port in SERVICES.items():
            lines.append(f"  {name:<8} http://{self.host}:{port:<6} demo service")
        lines += ["", f"  config   {self.config_path}"]
        lines += [f"           {self.config_path_of(r)}" for r in self.replicas if r != 1]
        if self.dynamic:
            lines.append(f"  live     filter configs by ECDS from {self.ecds_dir_of(1)}"
                         + (" (and ecds-2)" if len(self.replicas) > 1 else "")
                         + ": edit examples/config, then `make reload`")
        lines.append("")
        return "\n".join(lines)


# --------------------------------------------------------------------------- CLI

class _Terminate(Exception):
    pass


def _raise_terminate(signum: int, _frame: object) -> None:
    raise _Terminate(signal.Signals(signum).name)


def cmd_run(args: argparse.Namespace) -> int:
    stack = Stack(
        extra_listeners=args.extra,
        envoy_args=args.envoy_arg,
        concurrency=args.concurrency,
        replicas=args.replicas,
        log_level=args.log_level,
        log_dir=args.log_dir,
        overrides=dict(item.partition("=")[::2] for item in args.set),
        include_root=args.include_root,
        dynamic=not args.static,
    )
    signal.signal(signal.SIGTERM, _raise_terminate)
    signal.signal(signal.SIGINT, _raise_terminate)
    try:
        stack.start()
        print(stack.banner(), flush=True)
        while True:
            time.sleep(0.5)
            children = [("redis", stack.redis_running()), ("demo-services", stack.demo_services_running())]
            for r in stack.replicas:
                sfx = "" if r == 1 else f" (replica {r})"
                children += [(f"envoy{sfx}", stack.envoy_running(r)), (f"gateway-store{sfx}", stack.store_running(r))]
            for name, running in children:
                if not running:
                    print(f"stack.py: {name} exited unexpectedly; stopping the stack", file=sys.stderr)
                    return 1
    except StackError as exc:
        print(f"stack.py: error: {exc}", file=sys.stderr)
        return 1
    except (_Terminate, KeyboardInterrupt):
        print("\nstack.py: stopping...", file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abort the clean-up
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        was_running = stack.envoy_running() or stack.demo_services_running() or stack.redis_running()
        stack.stop()
        if was_running:
            print("stack.py: stopped", file=sys.stderr, flush=True)


def cmd_reload(args: argparse.Namespace) -> int:
    """Push the current examples/config files (with --override swaps) into
    every running replica; print each one's verdict; 1 on a rejection."""
    overrides = {}
    for item in args.override:
        rel, sep, path = item.partition("=")
        if not sep or not rel or not path:
            print(f"stack.py: error: --override expects REL=FILE, got {item!r}", file=sys.stderr)
            return 2
        overrides[rel] = Path(path).resolve()
    try:
        stack = Stack.from_state(args.config)
        results = stack.reload(overrides, timeout=args.timeout)
    except StackError as exc:
        print(f"stack.py: error: {exc}", file=sys.stderr)
        return 1
    for r, verdict in results.items():
        per = stack.last_reload.get(r, {})
        changed = ", ".join(f"{name} {v}" for name, v in sorted(per.items())) or "no filter config changed"
        print(f"replica {r} (admin {stack.admin_url('', r)}): {verdict}"
              + (f" ({changed})" if verdict != "not running" else ""))
        for line in stack.last_reload_log.get(r, []):
            print(f"    {line}")
        if verdict == "rejected":
            print(f"    the old config keeps serving; see extension_config_discovery.http_filter.<name>.update_rejected "
                  f"at {stack.admin_url('/stats?filter=update_rejected', r)} and Envoy's log for the field")
    if all(v == "not running" for v in results.values()):
        print("stack.py: error: no replica is running (make run)", file=sys.stderr)
        return 1
    return 1 if "rejected" in results.values() else 0


def cmd_check_ports(_args: argparse.Namespace) -> int:
    try:
        check_ports_free(Stack().ports())
    except StackError as exc:
        print(f"stack.py: {exc}", file=sys.stderr)
        return 1
    print("all stack ports are free")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the stack in the foreground (default)")
    run.add_argument("--extra", action="append", default=[], type=Path, metavar="FILE",
                     help="additional listeners to splice in (render.py --extra)")
    run.add_argument("--concurrency", type=int, default=2)
    run.add_argument("--replicas", type=int, choices=REPLICAS, default=2,
                     help="Envoy replicas (default 2: the contract's second replica on every port + 100)")
    run.add_argument("--log-level", default="warn")
    run.add_argument("--log-dir", type=Path, help="write the children's output there instead of the terminal")
    run.add_argument("--envoy-arg", action="append", default=[], metavar="ARG", help="extra Envoy argument")
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="override a render variable (render.py --set)")
    run.add_argument("--include-root", type=Path, help="root of ${json:...} includes (default examples/)")
    run.add_argument("--static", action="store_true",
                     help="serve the static form (filter configs inline; no live configuration, no reload)")
    sub.add_parser("check-ports", help="fail when a stack port is taken")
    rl = sub.add_parser("reload", help="push the filters' configurations (examples/config) into the running replicas")
    rl.add_argument("--override", action="append", default=[], metavar="REL=FILE",
                    help="read FILE instead of examples/REL for this push (e.g. config/sanitize/web.json=/tmp/x.json)")
    rl.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                    help=f"the running stack's rendered config (default {DEFAULT_CONFIG.relative_to(REPO)})")
    rl.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for Envoy's verdict")
    args = parser.parse_args(argv)
    if args.command in (None, "run"):
        if args.command is None:
            args = parser.parse_args(["run", *(argv or sys.argv[1:])])
        return cmd_run(args)
    if args.command == "reload":
        return cmd_reload(args)
    return cmd_check_ports(args)


if __name__ == "__main__":
    sys.exit(main())
