#!/usr/bin/env python3
"""Run the local demo stack: the demo services and one Envoy with every gateway.

    python3 envoy/stack.py run [--extra FILE] [--concurrency N] [--log-level L]

renders envoy/envoy.yaml.tmpl (profile `local`) into build/envoy/envoy.yaml,
starts target/release/demo-services and .venv/bin/envoy, waits until both are
ready (the services printed their ready line; Envoy's admin /ready answers
LIVE and every listener accepts TCP), prints the ports, and stays in the
foreground until Ctrl-C or SIGTERM, then stops both process groups and waits
for them. `make run` builds everything first and calls this.

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
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Iterable, Mapping, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import render  # noqa: E402  (sibling module, stdlib only)

REPO = HERE.parent
ENVOY_BIN = REPO / ".venv" / "bin" / "envoy"
DEMO_SERVICES_BIN = REPO / "target" / "release" / "demo-services"
DEFAULT_CONFIG = REPO / "build" / "envoy" / "envoy.yaml"

HOST = "127.0.0.1"
#: Gateway listeners of the contract (../shared/demo-contract.md).
LISTENERS: dict[str, int] = {"web": 10000, "app": 10001, "egress": 10002, "secure": 10443, "bare": 10009}
ADMIN_PORT = 9901
#: Demo services, one binary, consecutive ports from SERVICES_BASE_PORT.
SERVICES: dict[str, int] = {"echo": 18080, "issuer": 18081, "fds": 18082, "partner": 18083}
SERVICES_BASE_PORT = 18080
DEMO_READY_LINE = "demo-services ready"

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


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


class _Child:
    """One child process in its own process group, its output pumped to a sink."""

    def __init__(self, name: str, argv: Sequence[str], stdout: IO[str] | None,
                 stderr: IO[str] | None, ready_line: str | None = None, cwd: Path = REPO):
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
    """The demo services plus one Envoy running the rendered local config.

    log_dir: where the children's output goes (envoy.log: Envoy's own log incl.
      wasm logs; envoy-access.log: the JSON access log; demo-services.log).
      None: inherit this process's stdout/stderr (the foreground `run`).
    extra_listeners / extra_clusters: files spliced into the template (see
      render.py), e.g. the benchmark's extra listeners.
    overrides: profile variables to replace (render.py --set).
    envoy_args: appended to Envoy's command line.
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
        component_log_level: str = "wasm:info",
        envoy_bin: os.PathLike[str] | str = ENVOY_BIN,
        demo_services_bin: os.PathLike[str] | str = DEMO_SERVICES_BIN,
    ):
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
        self._envoy: _Child | None = None
        self._demo: _Child | None = None
        self._files: list[IO[str]] = []
        self._atexit_registered = False

    # ---- paths of the logs (None in the foreground mode)
    @property
    def envoy_log(self) -> Path | None:
        return self.log_dir / "envoy.log" if self.log_dir else None

    @property
    def access_log(self) -> Path | None:
        return self.log_dir / "envoy-access.log" if self.log_dir else None

    @property
    def demo_services_log(self) -> Path | None:
        return self.log_dir / "demo-services.log" if self.log_dir else None

    # ---- URLs
    def url(self, gateway: str, path: str = "/") -> str:
        scheme = "https" if gateway == "secure" else "http"
        host = "localhost" if gateway == "secure" else self.host  # the server cert names localhost
        return f"{scheme}://{host}:{LISTENERS[gateway]}{path}"

    def admin_url(self, path: str = "/") -> str:
        return f"http://{self.host}:{ADMIN_PORT}{path}"

    # ---- lifecycle
    def __enter__(self) -> "Stack":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def render(self) -> Path:
        text = render.render(
            "local",
            overrides=self.overrides,
            extra_listeners=self.extra_listeners,
            extra_clusters=self.extra_clusters,
            include_root=self.include_root,
        )
        render.write(self.config_path, text)
        return self.config_path

    def start(self) -> "Stack":
        for path, hint in ((self.envoy_bin, "make venv"), (self.demo_services_bin, "make build")):
            if not path.exists():
                raise StackError(f"{path} is missing: run `{hint}` (or `make run`, which does both)")
        ports = {"admin": ADMIN_PORT, **LISTENERS, **SERVICES}
        check_ports_free(ports, self.host)
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
            self.start_demo_services()
            self._start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop Envoy, then the demo services; wait for both. Idempotent."""
        if self._envoy is not None:
            self._envoy.stop()
            self._envoy = None
        self.stop_demo_services()
        for f in self._files:
            f.close()
        self._files.clear()

    def _open_log(self, name: str) -> IO[str] | None:
        if self.log_dir is None:
            return None
        f = open(self.log_dir / name, "a", encoding="utf-8")  # noqa: SIM115 (closed in stop())
        self._files.append(f)
        return f

    # ---- demo services
    def start_demo_services(self, timeout: float = DEMO_START_TIMEOUT) -> None:
        """Start the demo services (all four) and wait for their ready line."""
        if self._demo is not None and self._demo.alive():
            return
        check_ports_free(SERVICES, self.host)
        sink = self._open_log("demo-services.log") if self.log_dir else sys.stdout
        self._demo = _Child(
            "demo-services",
            [str(self.demo_services_bin), "--bind-host", self.host, "--base-port", str(SERVICES_BASE_PORT)],
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
        """Stop the demo services (echo, issuer, FDS, partner) and wait for them."""
        if self._demo is not None:
            self._demo.stop()
            self._demo = None

    def demo_services_running(self) -> bool:
        return self._demo is not None and self._demo.alive()

    # ---- envoy
    def envoy_command(self) -> list[str]:
        return [
            str(self.envoy_bin),
            "-c", str(self.config_path),
            "--concurrency", str(self.concurrency),
            "--log-level", self.log_level,
            *(["--component-log-level", self.component_log_level] if self.component_log_level else []),
            # No shared memory: a test stack and `make run` must not collide
            # on the hot-restart base id.
            "--disable-hot-restart",
            *self.envoy_args,
        ]

    def _start_envoy(self, timeout: float = ENVOY_START_TIMEOUT) -> None:
        self._envoy = _Child(
            "envoy",
            self.envoy_command(),
            stdout=self._open_log("envoy-access.log"),
            stderr=self._open_log("envoy.log"),
        )
        deadline = time.monotonic() + timeout

        def fail(why: str) -> StackError:
            code = self._envoy.stop() if self._envoy else None
            self._envoy = None
            log = _tail(self.envoy_log)
            return StackError(f"envoy {why}" + (f" (exit code {code})" if code else "") + (f"\n{log}" if log else ""))

        while True:
            if not self._envoy.alive():
                raise fail("exited during start-up")
            status, body = http_get(self.admin_url("/ready"), timeout=1.0)
            if status == 200 and body.strip() == b"LIVE":
                break
            if time.monotonic() > deadline:
                raise fail(f"not ready after {timeout:.0f}s (admin /ready: {status} {body[:80]!r})")
            time.sleep(0.05)
        ports = self.listener_ports()
        while True:
            waiting = [p for p in ports if not tcp_accepts(self.host, p)]
            if not waiting:
                return
            if not self._envoy.alive():
                raise fail("exited during start-up")
            if time.monotonic() > deadline:
                raise fail(f"listener port(s) {waiting} not accepting after {timeout:.0f}s")
            time.sleep(0.05)

    def listener_ports(self) -> list[int]:
        """Ports of every listener Envoy reports (contract ones + extras)."""
        status, body = http_get(self.admin_url("/listeners?format=json"))
        ports = set(LISTENERS.values())
        if status == 200:
            for listener in json.loads(body).get("listener_statuses", []):
                port = listener.get("local_address", {}).get("socket_address", {}).get("port_value")
                if port:
                    ports.add(int(port))
        return sorted(ports)

    def envoy_running(self) -> bool:
        return self._envoy is not None and self._envoy.alive()

    def admin(self, path: str) -> tuple[int, bytes]:
        """GET an Envoy admin endpoint, e.g. admin('/stats?filter=wasm')."""
        return http_get(self.admin_url(path))

    def banner(self) -> str:
        rows = [
            ("web", "http", LISTENERS["web"], "public gateway"),
            ("app", "http", LISTENERS["app"], "app gateway (signed requests)"),
            ("egress", "http", LISTENERS["egress"], "egress toward the partner"),
            ("secure", "https", LISTENERS["secure"], "mTLS gateway (client cert from examples/certs)"),
            ("bare", "http", LISTENERS["bare"], "web routes, no wasm filter (baseline)"),
            ("admin", "http", ADMIN_PORT, "Envoy admin"),
        ]
        lines = ["", "demo stack ready (Ctrl-C stops it)", ""]
        for name, scheme, port, what in rows:
            host = "localhost" if scheme == "https" else self.host
            lines.append(f"  {name:<8} {scheme}://{host}:{port:<6} {what}")
        lines.append("")
        for name, port in SERVICES.items():
            lines.append(f"  {name:<8} http://{self.host}:{port:<6} demo service")
        lines += ["", f"  config   {self.config_path}", ""]
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
        log_level=args.log_level,
        log_dir=args.log_dir,
        overrides=dict(item.partition("=")[::2] for item in args.set),
        include_root=args.include_root,
    )
    signal.signal(signal.SIGTERM, _raise_terminate)
    signal.signal(signal.SIGINT, _raise_terminate)
    try:
        stack.start()
        print(stack.banner(), flush=True)
        while True:
            time.sleep(0.5)
            for name, running in (("envoy", stack.envoy_running()), ("demo-services", stack.demo_services_running())):
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
        was_running = stack.envoy_running() or stack.demo_services_running()
        stack.stop()
        if was_running:
            print("stack.py: stopped", file=sys.stderr, flush=True)


def cmd_check_ports(_args: argparse.Namespace) -> int:
    try:
        check_ports_free({"admin": ADMIN_PORT, **LISTENERS, **SERVICES})
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
    run.add_argument("--log-level", default="warn")
    run.add_argument("--log-dir", type=Path, help="write the children's output there instead of the terminal")
    run.add_argument("--envoy-arg", action="append", default=[], metavar="ARG", help="extra Envoy argument")
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="override a render variable (render.py --set)")
    run.add_argument("--include-root", type=Path, help="root of ${json:...} includes (default examples/)")
    sub.add_parser("check-ports", help="fail when a stack port is taken")
    args = parser.parse_args(argv)
    if args.command in (None, "run"):
        if args.command is None:
            args = parser.parse_args(["run", *(argv or sys.argv[1:])])
        return cmd_run(args)
    return cmd_check_ports(args)


if __name__ == "__main__":
    sys.exit(main())
