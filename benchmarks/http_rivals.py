"""The HTTP rivals for ``python -m iocport bench --http``: each answers every
request with ``200``, ``content-type: text/plain`` and the body ``hello,
world``, as ``python -m iocport http`` does.

    python benchmarks/http_rivals.py granian --interface rsgi|asgi [opts]
    python benchmarks/http_rivals.py uvicorn   [opts]    # httptools, uvloop, raw ASGI app
    python benchmarks/http_rivals.py socketify [opts]
    python benchmarks/http_rivals.py nginx     [opts]    # Debian's nginx: return 200 "hello, world"

    opts: --host 127.0.0.1 --port 8080 (0: a free port)

Each runs the real server as a child process (granian: one worker, one
runtime thread, HTTP/1; uvicorn: ``--http httptools --loop uvloop``, one
process; socketify: this file's ``serve-socketify``, its App in one
process; nginx: in the foreground, one worker process, access log off,
keep-alive unlimited, its configuration, pid file and temporary paths in a
temporary directory), waits until it accepts connections, then prints
``listening on HOST:PORT (what)``; SIGINT or SIGTERM stop the child and
exit 0.  The benchmark counts the CPU time of this process and every
descendant (this one only waits).

The apps are below: ``asgi_app`` (granian ASGI, uvicorn), ``rsgi_app``
(granian RSGI), ``socketify_main``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

HELLO = b"hello, world"
HERE = Path(__file__).resolve().parent
# where Debian puts nginx (/usr/sbin may not be on a user's PATH)
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")

# ---- the apps ---------------------------------------------------------------

ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]
_ASGI_START: dict[str, Any] = {
    "type": "http.response.start", "status": 200,
    "headers": [(b"content-type", b"text/plain"),
                (b"content-length", str(len(HELLO)).encode())]}
_ASGI_BODY: dict[str, Any] = {"type": "http.response.body", "body": HELLO}


async def asgi_app(scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
    """The raw ASGI app (no framework): hello, world to every request; the
    lifespan protocol answered."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        await send(_ASGI_START)
        await send(_ASGI_BODY)


class RSGIProtocol(Protocol):
    """What the RSGI app uses of granian's HTTP protocol object."""

    def response_bytes(self, status: int, headers: list[tuple[str, str]],
                       body: bytes) -> None: ...


_RSGI_HEADERS = [("content-type", "text/plain")]


async def rsgi_app(scope: object, protocol: RSGIProtocol) -> None:
    """The RSGI app (granian's own interface): hello, world to every request."""
    protocol.response_bytes(200, _RSGI_HEADERS, HELLO)


def socketify_main(host: str, port: int) -> int:
    """socketify.py's App on one process: hello, world to every path."""
    from socketify import App, AppListenOptions

    def hello(res: Any, req: Any) -> None:
        res.write_header("content-type", "text/plain")
        res.end(HELLO)

    app = App()
    app.any("/*", hello)
    app.listen(AppListenOptions(port=port, host=host), lambda config: None)
    app.run()
    return 0


# ---- nginx --------------------------------------------------------------------

def find_nginx() -> str | None:
    """The nginx binary: on PATH, or where Debian puts it."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in NGINX_PATHS if os.access(p, os.X_OK)), None)


def nginx_config(directory: str | os.PathLike[str], host: str, port: int) -> str:
    """nginx's configuration: one worker, in the foreground, access log off,
    keep-alive without a request limit, every path answered ``200 hello,
    world`` (text/plain) with ``return``; its pid file, error log and
    temporary paths under `directory`."""
    d = Path(directory)
    temps = "\n".join(f"    {kind}_temp_path {d / kind};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""daemon off;
master_process on;
worker_processes 1;
pid {d / 'nginx.pid'};
error_log {d / 'error.log'} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    server_tokens off;
    keepalive_requests 1000000000;
    keepalive_timeout 600s;
{temps}
    server {{
        listen {host}:{port} backlog=1024;
        location / {{
            default_type text/plain;
            return 200 "hello, world";
        }}
    }}
}}
"""


# ---- the launcher ---------------------------------------------------------------

class Stop(Exception):
    """Raised by the SIGINT/SIGTERM handler: stop the child, exit 0."""


def _on_signal(signum: int, frame: object) -> None:
    raise Stop()


def free_port(host: str) -> int:
    """A port nothing listens on now (for servers that cannot take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_listening(child: subprocess.Popen[bytes], host: str, port: int,
                   timeout: float = 20.0, ready_file: Path | None = None) -> str | None:
    """None once (host, port) accepts a connection (and `ready_file`
    exists: nginx writes its pid file once it has bound its sockets); else
    why not (the child exited, or the time ran out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return f"exited with status {child.returncode} before listening"
        if ready_file is not None and not ready_file.exists():
            time.sleep(0.02)
            continue
        try:
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            time.sleep(0.02)
            continue
        # still running a moment later: the listener is the child's (a
        # child that could not bind exits at once)
        time.sleep(0.2)
        if child.poll() is None:
            return None
    return f"not listening after {timeout:g} s"


def _version(package: str) -> str:
    from importlib import metadata
    try:
        return f"{package} {metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return package


def child_argv(args: argparse.Namespace, port: int, tmp: str) -> tuple[list[str], str]:
    """The server's command line and what the banner says it is; raises
    SystemExit with one line when it is not installed."""
    host = args.host
    if args.kind == "granian":
        if _missing("granian"):
            raise SystemExit("http_rivals: granian is not installed: pip install granian")
        app = f"http_rivals:{args.interface}_app"
        return ([sys.executable, "-m", "granian", "--interface", args.interface,
                 "--workers", "1", "--runtime-threads", "1", "--http", "1",
                 "--host", host, "--port", str(port), "--no-access-log",
                 "--log-level", "warning", "--working-dir", str(HERE), app],
                f"{_version('granian')}, {args.interface.upper()}, one worker, "
                "one runtime thread")
    if args.kind == "uvicorn":
        missing = [p for p in ("uvicorn", "httptools", "uvloop") if _missing(p)]
        if missing:
            raise SystemExit(f"http_rivals: not installed: pip install {' '.join(missing)}")
        return ([sys.executable, "-m", "uvicorn", "--http", "httptools", "--loop", "uvloop",
                 "--host", host, "--port", str(port), "--no-access-log",
                 "--log-level", "warning", "--lifespan", "on", "--app-dir", str(HERE),
                 "http_rivals:asgi_app"],
                f"{_version('uvicorn')}, httptools, uvloop, raw ASGI app")
    if args.kind == "socketify":
        if _missing("socketify"):
            raise SystemExit("http_rivals: socketify is not installed: pip install socketify")
        return ([sys.executable, str(Path(__file__).resolve()), "serve-socketify",
                 "--host", host, "--port", str(port)],
                f"{_version('socketify')}, one process")
    nginx = find_nginx()
    if nginx is None:
        raise SystemExit("http_rivals: nginx is not installed: apt-get install nginx")
    conf = Path(tmp, "nginx.conf")
    conf.write_text(nginx_config(tmp, host, port))
    r = subprocess.run([nginx, "-v"], capture_output=True, text=True)
    version = (r.stderr.strip().split(":")[-1].strip() or "nginx")
    return ([nginx, "-p", tmp, "-e", str(Path(tmp, "error.log")), "-c", str(conf)],
            f"{version}, one worker, return 200")


def _missing(package: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(package) is None


def launch(args: argparse.Namespace) -> int:
    """Run the rival until SIGINT or SIGTERM (see the module's docstring)."""
    return run_child("http_rivals", args.kind, args.host, args.port,
                     lambda port, tmp: child_argv(args, port, tmp),
                     ready_file="nginx.pid" if args.kind == "nginx" else None)


def run_child(prog: str, kind: str, host: str, port: int,
              make_argv: Callable[[int, str], tuple[list[str], str]],
              ready_file: str | None = None) -> int:
    """Run the server `make_argv(port, tmp)` makes ((its command line, what
    the banner says it is), with a temporary directory of its own) as a
    child, on `port` (0: a free one), until SIGINT or SIGTERM: the banner
    once it accepts connections (and `ready_file` exists in its directory),
    then wait.  Also resp_rivals.py's launcher (`prog`: whose messages)."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    port = port or free_port(host)
    with tempfile.TemporaryDirectory(prefix=f"iocport-{kind}-") as tmp:
        argv, what = make_argv(port, tmp)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(HERE) + (os.pathsep + env["PYTHONPATH"]
                                         if env.get("PYTHONPATH") else "")
        # the child's output goes to this process's stderr: its stdout is the
        # banner's, which nobody reads after that
        child = subprocess.Popen(argv, stdout=sys.stderr, env=env)
        try:
            why = wait_listening(child, host, port, ready_file=(
                Path(tmp, ready_file) if ready_file else None))
            if why is not None:
                sys.stderr.write(f"{prog}: {kind} {why}\n")
                return 1
            print(f"listening on {host}:{port} ({what})", flush=True)
            child.wait()
            sys.stderr.write(f"{prog}: {kind} exited ({child.returncode})\n")
            return 1
        except Stop:
            return stop_child(child)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()


def stop_child(child: subprocess.Popen[bytes]) -> int:
    """SIGTERM to the child (nginx: its fast shutdown), SIGKILL after 10 s;
    0 when it ended by itself or by that SIGTERM."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            return 1
    return 0 if child.returncode in (0, -signal.SIGTERM) else 1


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module's docstring); the exit status."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("kind", choices=("granian", "uvicorn", "socketify", "nginx",
                                    "serve-socketify"))
    p.add_argument("--interface", choices=("rsgi", "asgi"), default="rsgi",
                   help="granian only: the app's interface")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0: a free port")
    args = p.parse_args(argv)
    if args.kind == "serve-socketify":
        return socketify_main(args.host, args.port)
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
