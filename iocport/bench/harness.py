"""The machinery of the benchmark, which knows no plan: building the C tools
of benchmarks/, starting and stopping servers, pinning them and the clients
to CPUs, one load-generator run (loadgen; h2load and wrk for HTTP, or
redis-benchmark for RESP, with the CPU time of the server's process tree),
one idle-memory reading, and what the machine is."""
from __future__ import annotations

import csv
import hashlib
import http.client
import importlib.util
import json
import math
import os
import re
import selectors
import socket
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from .._cli import Failure

# One loadgen run's figures (its JSON line), or {"failed": why, "errors": 1}.
Run = dict[str, Any]

CFLAGS = ["-O2", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra"]
BENCH_SOURCES = ("loadgen.c", "c_echo_epoll.c")
# `bench --tls` builds these with OpenSSL: the load generator's TLS build
# (a second binary, so that the plain one needs no OpenSSL) and the C TLS
# echo server; (source, extra compiler flags, binary name)
TLS_TOOLS: dict[str, tuple[str, list[str], str]] = {
    "loadgen": ("loadgen.c", ["-DLOADGEN_TLS"], "loadgen-tls"),
    "c_echo": ("c_echo_tls.c", [], "c_echo_tls")}
TLS_LIBS = ["-lssl", "-lcrypto"]
TLS_DEV_HINT = ("OpenSSL's headers and libraries are needed to build the TLS benchmark's "
                "C tools: apt-get install libssl-dev (Debian, Ubuntu; "
                "dnf install openssl-devel on Fedora)")

# The rivals' event loops that are not in the standard library, by loop name:
# what --install-rivals installs, whose absence skips a server rather than
# failing it, and whose versions go into the machine line.  The `bench`
# extra in pyproject.toml holds them too, with matplotlib (the chart).
RIVAL_PACKAGES = {"uvloop": "uvloop", "rloop": "rloop"}
# `bench --http`'s Python rivals' packages (what --install-rivals installs
# with --http; in the `bench` extra too), and what each rival needs, by
# the first word of its name (benchmarks/http_rivals.py runs them).
HTTP_RIVAL_PACKAGES = {"granian": "granian", "uvicorn": "uvicorn", "httptools": "httptools",
                       "socketify": "socketify"}
HTTP_RIVAL_NEEDS: dict[str, tuple[str, ...]] = {
    "granian": ("granian",), "uvicorn": ("uvicorn", "httptools", "uvloop"),
    "socketify": ("socketify",)}
# `bench --http`'s programs that are no Python package: the load generators
# and nginx, by the Debian package that holds each
HTTP_TOOLS = {"h2load": "nghttp2-client", "wrk": "wrk", "nginx": "nginx"}
# `bench --resp`'s: the load generator and the rival, by Debian package
RESP_TOOLS = {"redis-benchmark": "redis-tools", "redis-server": "redis-server"}
BENCH_EXTRA = "pip install 'iocport[bench]'"

# The iocport package directory (this file is in iocport/bench/): the
# benchmarks' C sources are found from it, and the servers this starts import
# iocport from its parent.
PACKAGE_DIR = Path(__file__).resolve().parent.parent


# ---- building -------------------------------------------------------------

def benchmarks_dir() -> Path:
    """The directory holding loadgen.c: the repository's benchmarks/ next to
    the package, or a copy shipped inside the package."""
    here = PACKAGE_DIR
    for d in (here.parent / "benchmarks", here / "benchmarks"):
        if all((d / s).is_file() for s in BENCH_SOURCES):
            return d
    raise Failure("benchmarks/loadgen.c not found next to the package "
                  f"({here.parent / 'benchmarks'})")


def cache_dir() -> Path:
    d = os.environ.get("IOCPORT_BENCH_CACHE")
    if d:
        return Path(d)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "iocport-bench"


def build(source: str, out_dir: str | os.PathLike[str] | None = None, *,
          flags: Sequence[str] = (), libs: Sequence[str] = (), name: str | None = None) -> Path:
    """Compile one C file of benchmarks/ (cached by content and flags) into
    `name` (default: the source's stem); return the path."""
    cc = os.environ.get("CC") or "gcc"
    if not shutil.which(cc):
        raise Failure(f"{cc} not found (needed to build {source})")
    src = benchmarks_dir() / source
    text = src.read_bytes()
    cmd = [*CFLAGS, *flags]
    digest = hashlib.sha256(text + " ".join([cc, *cmd, *libs]).encode()).hexdigest()[:12]
    out_dir = Path(out_dir) if out_dir else cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / f"{name or src.stem}-{digest}"
    if exe.is_file():
        return exe
    tmp = out_dir / f".{exe.name}.{os.getpid()}"
    r = subprocess.run([cc, *cmd, str(src), "-o", str(tmp), *libs],
                       capture_output=True, text=True)
    if r.returncode:
        if libs and ("openssl/" in r.stderr or "-lssl" in r.stderr
                     or "-lcrypto" in r.stderr):
            raise Failure(f"building {source} failed: {TLS_DEV_HINT}\n{r.stderr}")
        raise Failure(f"building {source} failed:\n{r.stderr}")
    os.replace(tmp, exe)   # atomic: concurrent builds do not trip over each other
    return exe


def build_tls(tool: str, out_dir: str | os.PathLike[str] | None = None) -> Path:
    """TLS_TOOLS' `tool` ('loadgen' or 'c_echo'), built with OpenSSL; a
    Failure naming the package to install when OpenSSL's headers are not
    there."""
    source, flags, name = TLS_TOOLS[tool]
    return build(source, out_dir, flags=flags, libs=TLS_LIBS, name=name)


def make_certs(directory: str | os.PathLike[str]) -> tuple[Path, Path, str]:
    """A server certificate for 127.0.0.1 and localhost (ECDSA P-256) and its
    key, written to `directory`: with trustme when it is installed, else
    with the openssl command.  Returns (cert path, key path, how)."""
    cert, key = Path(directory, "bench-cert.pem"), Path(directory, "bench-key.pem")
    try:
        import trustme
    except ImportError:
        pass
    else:
        leaf = trustme.CA().issue_cert("127.0.0.1", "localhost")
        leaf.private_key_pem.write_to_path(str(key))
        cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
        return cert, key, f"trustme {getattr(trustme, '__version__', '')}".strip()
    openssl = shutil.which("openssl")
    if openssl is None:
        raise Failure("bench --tls makes its certificate with trustme or the openssl "
                      "command, and neither is here: pip install trustme")
    r = subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=IP:127.0.0.1,DNS:localhost",
                        "-keyout", str(key), "-out", str(cert)],
                       capture_output=True, text=True)
    if r.returncode:
        raise Failure(f"openssl req failed:\n{r.stderr}")
    return cert, key, "openssl req"


def tls_dev_installed() -> bool:
    """Whether OpenSSL's C headers look installed (the --install-rivals check)."""
    return any(Path(d, "openssl", "ssl.h").is_file()
               for d in ("/usr/include", "/usr/local/include"))


# ---- processes ------------------------------------------------------------

def pinning() -> tuple[int, int] | tuple[None, None]:
    """(server cpu, client cpu) or (None, None) when pinning is impossible."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2 and shutil.which("taskset"):
        return cpus[0], cpus[1]
    return None, None


def _pinned(cpu: int | None, argv: list[str]) -> list[str]:
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


class ServerProc:
    """A server started for the benchmark, from its banner (``listening on
    HOST:PORT``) on: its address and pid; stop() ends it."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None,
                 cpu: int | None = None) -> None:
        self.name: str = name
        self.log: IO[bytes] = tempfile.TemporaryFile()
        self.proc: subprocess.Popen[str] = subprocess.Popen(
            _pinned(cpu, argv), stdout=subprocess.PIPE, stderr=self.log, env=env,
            text=True)
        self.banner: str = self._read_banner(20.0)
        addr = self.banner.split()[2]
        host, port = addr.rsplit(":", 1)
        self.host: str = host
        self.port: int = int(port)
        self.pid: int = self.proc.pid     # taskset execs the server: same pid

    def _read_banner(self, timeout: float) -> str:
        stdout = self.proc.stdout
        assert stdout is not None     # stdout=PIPE
        sel = selectors.DefaultSelector()
        sel.register(stdout, selectors.EVENT_READ)
        ready = sel.select(timeout)
        sel.close()
        line = stdout.readline() if ready else ""
        if not line.startswith("listening on "):
            self.proc.kill()
            self.proc.wait()
            self.log.seek(0)
            err = self.log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} did not start: {line!r} {err}")
        return line.strip()

    def stop(self) -> int | None:
        """SIGTERM; returns the exit status (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        return self.proc.returncode


def server_argv(kind: str, extra: list[str], framing: str, bench_dir: Path,
                c_echo: Path) -> list[str]:
    """The command line of a server of `kind` (iocport, c, c-tls, asyncio,
    threads; iocport-http, http-rival: `bench --http`'s; resp-kv,
    resp-rival: `bench --resp`'s), with `extra` options (for an http-rival
    or a resp-rival, its arguments to http_rivals.py or resp_rivals.py)."""
    if kind == "c-tls":     # built by then (bench --tls builds it first): cached
        return [str(build_tls("c_echo")), "--port", "0", "--framing", framing, *extra]
    if kind == "iocport":
        return [sys.executable, "-m", "iocport", "echo", "--port", "0",
                "--framing", framing, *extra]
    if kind == "c":
        return [str(c_echo), "--port", "0", "--framing", framing]
    if kind == "iocport-http":
        return [sys.executable, "-m", "iocport", "http", "--port", "0", *extra]
    if kind == "http-rival":
        return [sys.executable, str(bench_dir / "http_rivals.py"), *extra, "--port", "0"]
    if kind == "resp-kv":
        kv = kv_script()
        assert kv is not None, KV_HINT       # server_missing_note() said so first
        return [sys.executable, str(kv), "--port", "0", *extra]
    if kind == "resp-rival":
        return [sys.executable, str(bench_dir / "resp_rivals.py"), *extra, "--port", "0"]
    rivals = str(bench_dir / "rivals.py")
    return [sys.executable, rivals, kind, "--port", "0", "--framing", framing, *extra]


def find_tool(name: str) -> str | None:
    """A program of HTTP_TOOLS or RESP_TOOLS: on PATH, or in the sbin
    directories (Debian's nginx is /usr/sbin/nginx, not on every user's
    PATH)."""
    found = shutil.which(name)
    if found:
        return found
    return next((p for d in ("/usr/sbin", "/usr/local/sbin")
                 if os.access(p := os.path.join(d, name), os.X_OK)), None)


def tool_hint(name: str) -> str:
    """How to get a program of HTTP_TOOLS or RESP_TOOLS."""
    return f"apt-get install {(HTTP_TOOLS | RESP_TOOLS)[name]}"


def tool_version(name: str) -> str | None:
    """The first line a program of HTTP_TOOLS or RESP_TOOLS says about its
    version."""
    exe = find_tool(name)
    if exe is None:
        return None
    flag = {"h2load": "--version", "wrk": "-v", "nginx": "-v", "redis-benchmark": "--version",
            "redis-server": "--version"}[name]
    try:
        r = subprocess.run([exe, flag], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (r.stdout + r.stderr).strip().splitlines()
    if not lines:
        return None
    # redis-server: "Redis server v=7.0.15 sha=... malloc=..."
    return re.sub(r"^Redis server v=(\S+).*", r"redis-server \1",
                  lines[0].replace("nginx version: ", ""))


def run_loadgen(loadgen: Path, server: ServerProc, *, conns: int, depth: int, size: int,
                framing: str, seconds: float, warmup: float = 0.2, cpu: int | None = None,
                rate: int | None = None, tls: bool = False, handshakes: bool = False) -> Run:
    """One loadgen run against `server`: closed loop with `depth` messages in
    flight per connection, or open loop at `rate` messages per second; over
    TLS with `tls` (`loadgen` then the TLS build); with `handshakes`, a new
    connection per message."""
    argv = [str(loadgen), "--host", server.host, "--port", str(server.port),
            "--conns", str(conns), "--depth", str(depth), "--size", str(size),
            "--framing", framing, "--seconds", str(seconds),
            "--warmup-seconds", str(warmup), "--server-pid", str(server.pid)]
    if rate:
        argv += ["--rate", str(rate)]
    if tls:
        argv.append("--tls")
    if handshakes:
        argv.append("--handshakes")
    try:
        r = subprocess.run(_pinned(cpu, argv), capture_output=True, text=True,
                           timeout=seconds + warmup + 30)
    except subprocess.TimeoutExpired:
        return {"failed": "loadgen timed out", "errors": 1}
    lines = r.stdout.strip().splitlines()
    try:
        res: Run = json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"failed": f"loadgen exit {r.returncode}: {r.stderr.strip()[-300:]}",
                "errors": 1}
    if res.get("server_cpu_s"):
        res["msgs_per_cpu_s"] = res["msgs"] / res["server_cpu_s"]
    else:
        res["msgs_per_cpu_s"] = None
    return res


# ---- HTTP (bench --http): the server's CPU, h2load and wrk -----------------

CLK_TCK = os.sysconf("SC_CLK_TCK")
HELLO = b"hello, world"


def tree_cpu(pid: int) -> tuple[float, float, int]:
    """(CPU seconds, of them in the kernel, processes) of process `pid` and
    every descendant: utime+stime (every thread of each) plus cutime+cstime
    (the children each has reaped) from /proc/PID/stat.  Counting the reaped
    children's time keeps a delta whole when a process of the tree exits
    between two readings; a descendant started between them counts from
    nought."""
    stats: dict[int, tuple[int, list[str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue        # exited meanwhile
        fields = text[text.rindex(")") + 2:].split()
        stats[int(entry)] = (int(fields[1]), fields)
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(p)
    total = kernel = 0
    count = 0
    todo = [pid] if pid in stats else []
    while todo:
        p = todo.pop()
        fields = stats[p][1]
        # after the command: state ppid ... utime(12th) stime cutime cstime
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        total += utime + stime + cutime + cstime
        kernel += stime + cstime
        count += 1
        todo += children.get(p, [])
    return total / CLK_TCK, kernel / CLK_TCK, count


def http_check(host: str, port: int) -> str | None:
    """None when GET / is answered 200, text/plain, ``hello, world``; else
    what was wrong (the check before a server's warm-up: every server must
    answer the same)."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read()
        ctype = resp.getheader("content-type") or ""
    except (OSError, http.client.HTTPException) as exc:
        return f"GET / failed: {exc}"
    finally:
        conn.close()
    if resp.status != 200 or body != HELLO or not ctype.startswith("text/plain"):
        return f"GET / answered {resp.status} {ctype!r} {body[:40]!r}"
    return None


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 6e7}


def _us(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_h2load(text: str) -> Run:
    """h2load's summary: requests answered 2xx (msgs), its duration, and the
    errors: requests errored (no answer: a connection failed, a timeout)
    plus answers other than 2xx.  {"failed": ...} when it has no summary."""
    fin = re.search(r"finished in ([\d.]+)(us|ms|s|m), ([\d.]+) req/s", text)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if not (fin and req and codes):
        return {"failed": f"h2load: no summary: {text.strip()[-200:]!r}", "errors": 1}
    done, failed, errored, timeout = (int(req.group(i)) for i in (3, 5, 6, 7))
    ok, n3, n4, n5 = (int(x) for x in codes.groups())
    seconds = _us(fin.group(1), fin.group(2)) / 1e6
    res: Run = {"msgs": ok, "seconds": seconds, "msgs_per_sec": ok / seconds if seconds else 0,
                "done": done, "errors": errored + n3 + n4 + n5,
                "p50_us": None, "p99_us": None, "p999_us": None}
    if res["errors"]:
        res["why"] = (f"{failed} failed: {errored} errored ({timeout} timed out), "
                      f"{n3} 3xx, {n4} 4xx, {n5} 5xx")
    return res


def parse_wrk(text: str) -> Run:
    """wrk's summary (with --latency): requests, duration, p50 and p99, and
    the errors: socket errors (connect, read, write, timeout) plus "Non-2xx
    or 3xx responses" (wrk counts a 3xx as a success: the check before
    the rounds makes sure that every server answers 200).  {"failed": ...}
    when it has no summary."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", text)
    if not m:
        return {"failed": f"wrk: no summary: {text.strip()[-200:]!r}", "errors": 1}
    n, seconds = int(m.group(1)), _us(m.group(2), m.group(3)) / 1e6
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                     text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock_errors = sum(int(x) for x in sock.groups()) if sock else 0
    bad = int(non2xx.group(1)) if non2xx else 0
    pct = {q: _us(v, u) for q, v, u in
           re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)}
    res: Run = {"msgs": n - bad, "seconds": seconds,
                "msgs_per_sec": (n - bad) / seconds if seconds else 0,
                "errors": sock_errors + bad, "p50_us": pct.get("50"), "p99_us": pct.get("99"),
                "p999_us": None}
    if res["errors"]:
        res["why"] = (f"socket errors {sock.group(0) if sock else 0}, "
                      f"non-2xx or 3xx {bad}")
    return res


def latency_log(path: str | os.PathLike[str], skip_s: float) -> dict[str, Any]:
    """p50, p99, p99.9 (us) of h2load's --log-file (a line a request: start
    in microseconds since the epoch, status, microseconds to the end of
    the answer), the requests that started in the first `skip_s` seconds
    left out; with the count of non-2xx lines."""
    rows: list[tuple[int, int, int]] = []
    with open(path) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
    if not rows:
        return {"p50_us": None, "p99_us": None, "p999_us": None, "logged": 0, "non_2xx": 0}
    start = min(r[0] for r in rows) + skip_s * 1e6
    lat = sorted(r[2] for r in rows if r[0] >= start)
    non_2xx = sum(1 for r in rows if not 200 <= r[1] < 300)

    def pct(q: float) -> float | None:
        return float(lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else None

    return {"p50_us": pct(0.5), "p99_us": pct(0.99), "p999_us": pct(0.999),
            "logged": len(lat), "non_2xx": non_2xx}


def run_http_client(client: str, server: ServerProc, *, conns: int, depth: int,
                    seconds: float, cpu: int | None = None, rate: int | None = None,
                    skip: float = 0.5) -> Run:
    """One run of `client` (h2load --h1, or wrk) against `server`: `conns`
    keep-alive connections, `depth` requests in flight on each (h2load -m;
    wrk: 1), for `seconds` (wrk: whole seconds, at least one); with `rate`
    (h2load only), `rate` requests per second in all (--rps, per
    connection) and p99 from its per-request log, the first `skip` seconds
    left out.  The server's CPU time (every process of its tree) is read
    just before the client starts and just after it exits: the window holds
    the client's whole run, and the server is idle outside it.  A run with
    any error or non-2xx answer is {"failed": ..., "errors": n}."""
    exe = find_tool(client)
    if exe is None:
        return {"failed": f"{client} not found: {tool_hint(client)}", "errors": 1}
    url = f"http://{server.host}:{server.port}/"
    log = None
    if client == "h2load":
        argv = [exe, "--h1", "-t", "1", "-c", str(conns), "-m", str(depth),
                "-D", f"{max(1, round(seconds * 1000))}ms", url]
        if rate:
            log = tempfile.NamedTemporaryFile(prefix="iocport-h2load-", suffix=".tsv",
                                              delete=False)
            log.close()
            argv[1:1] = ["--rps", str(max(1, round(rate / conns))), "--log-file", log.name]
    else:
        argv = [exe, "-t", "1", "-c", str(conns), "-d", f"{max(1, math.ceil(seconds))}s",
                "--timeout", "10s", "--latency", url]
    r, window = _client_window(argv, server, cpu, seconds + 60)
    if r is None:
        if log is not None:
            os.unlink(log.name)
        return {"failed": f"{client} timed out", "errors": 1}
    try:
        res = parse_h2load(r.stdout) if client == "h2load" else parse_wrk(r.stdout)
        if log is not None and "failed" not in res:
            lat = latency_log(log.name, skip)
            res.update({k: lat[k] for k in ("p50_us", "p99_us", "p999_us")})
            res["latency_requests"] = lat["logged"]
            if lat["non_2xx"] and not res["errors"]:
                res["errors"] = lat["non_2xx"]
                res["why"] = f"{lat['non_2xx']} non-2xx answers in the log"
    finally:
        if log is not None:
            os.unlink(log.name)
    if "failed" in res:
        res["failed"] += f" (exit {r.returncode}: {r.stderr.strip()[-200:]!r})"
        return res
    if r.returncode:
        res["errors"] = res.get("errors") or 1
        res.setdefault("why", f"{client} exit {r.returncode}: {r.stderr.strip()[-200:]}")
    if server.proc.poll() is not None:
        res["errors"] = res.get("errors") or 1
        res.setdefault("why", f"the server exited ({server.proc.returncode})")
    if res["errors"]:
        return {"failed": res["why"], "errors": res["errors"]}
    return _per_cpu(res, window)


def _client_window(argv: list[str], server: ServerProc, cpu: int | None, timeout: float
                   ) -> tuple[subprocess.CompletedProcess[str] | None, dict[str, float]]:
    """Run a client (`argv`, pinned to `cpu`) to its end and read the CPU
    time of the server's process tree just before it starts and just after
    it exits: the window holds the client's whole run (connections made,
    requests, close), and the server is idle outside it.  (None, ...) when
    it ran past `timeout` seconds; else (its output, the window's figures)."""
    before = tree_cpu(server.pid)
    t0 = time.monotonic()
    try:
        r = subprocess.run(_pinned(cpu, argv), capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        r = None
    window = time.monotonic() - t0
    after = tree_cpu(server.pid)
    return r, {"seconds": window, "server_cpu_s": after[0] - before[0],
               "server_sys_s": after[1] - before[1], "server_processes": after[2]}


def _per_cpu(res: Run, window: dict[str, float]) -> Run:
    """A clean run's figures with the CPU window's (_client_window): the
    client's own duration kept as client_seconds, server CPU % over the
    window, requests per server CPU-second."""
    res["client_seconds"] = res["seconds"]
    res.update(window)                # the CPU window: server CPU % is over it
    res["msgs_per_cpu_s"] = (res["msgs"] / res["server_cpu_s"]
                             if res["server_cpu_s"] > 0 else None)
    return res


# ---- RESP (bench --resp): kv.py, redis-server, redis-benchmark ---------------

# examples/kv.py ships in the sdist (with tests/ and benchmarks/), not in
# the wheel: the example is a program to read, not a module of the package.
KV_HINT = ("examples/kv.py is not in this copy of iocport (a wheel has no examples/): run "
           "the bench from a source checkout or an unpacked sdist (pip install -e .)")
# What redis-benchmark -e (passed so that an error reply is shown, not only
# its exit status) says on every run: the one line besides its CSV that is
# no error.
REDIS_BENCHMARK_NOTICE = "WARNING: -e option has no effect."


def kv_script() -> Path | None:
    """examples/kv.py beside the package (a source tree), or None."""
    kv = PACKAGE_DIR.parent / "examples" / "kv.py"
    return kv if kv.is_file() else None


def resp_check(host: str, port: int) -> str | None:
    """None when SET then GET are answered as Redis answers them; else what
    came back (the check before a server's warm-up)."""
    key, value = b"iocport-bench-check", b"hello, world"
    commands = [[b"SET", key, value], [b"GET", key]]
    want = b"+OK\r\n$%d\r\n%s\r\n" % (len(value), value)
    got = b""
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"".join(b"*%d\r\n" % len(c) + b"".join(
                b"$%d\r\n%s\r\n" % (len(a), a) for a in c) for c in commands))
            while len(got) < len(want) and (chunk := s.recv(4096)):
                got += chunk
    except OSError as exc:
        return f"SET and GET failed: {exc}"
    return None if got == want else f"SET and GET answered {got[:60]!r}"


def parse_redis_benchmark(stdout: str, stderr: str, returncode: int, command: str,
                          requests: int) -> Run:
    """redis-benchmark --csv's row for `command`: its requests per second
    and latency percentiles.  It prints the row only once all `requests`
    have been answered, so that count is the completed requests.  A failed
    run ({"failed": ...}) when it exited non-zero, printed no row, or
    printed any line that is neither CSV nor its -e notice: an error reply
    (it exits at the first), a connection lost, a warning (a server that
    does not answer CONFIG GET as Redis does)."""
    lines = [ln.strip() for ln in (stdout + "\n" + stderr).splitlines()]
    said = [ln for ln in lines if ln and not ln.startswith('"')
            and not ln.startswith(REDIS_BENCHMARK_NOTICE)]
    row = next((r for r in csv.reader(ln for ln in stdout.splitlines() if ln.startswith('"'))
                if r and r[0] == command.upper()), None)
    if returncode or said or row is None:
        why = "; ".join(said)[-200:] or "no result"
        return {"failed": f"redis-benchmark exit {returncode}: {why}", "errors": 1}
    header = next(csv.reader([next(ln for ln in stdout.splitlines() if ln.startswith('"'))]))
    fig = dict(zip(header, row))
    rps = float(fig["rps"])
    ms = {q: float(fig[f"{q}_latency_ms"]) * 1e3 for q in ("p50", "p99")
          if f"{q}_latency_ms" in fig}
    return {"msgs": requests, "seconds": requests / rps if rps else 0.0,
            "msgs_per_sec": rps, "errors": 0, "p50_us": ms.get("p50"),
            "p99_us": ms.get("p99"), "p999_us": None}


def run_resp_client(server: ServerProc, *, command: str, conns: int, depth: int,
                    requests: int, cpu: int | None = None) -> Run:
    """One redis-benchmark run against `server`: `command` (GET or SET, its
    defaults: one key, 3-byte values) `requests` times over `conns`
    connections, `depth` commands in flight on each (-P), its output read by
    parse_redis_benchmark; requests per server CPU-second over the server's
    process tree, as run_http_client counts them."""
    exe = find_tool("redis-benchmark")
    if exe is None:
        return {"failed": f"redis-benchmark not found: {tool_hint('redis-benchmark')}",
                "errors": 1}
    argv = [exe, "-h", server.host, "-p", str(server.port), "-c", str(conns),
            "-n", str(requests), "-P", str(depth), "-t", command.lower(), "--csv", "-e"]
    r, window = _client_window(argv, server, cpu, 120.0)
    if r is None:
        return {"failed": "redis-benchmark timed out", "errors": 1}
    res = parse_redis_benchmark(r.stdout, r.stderr, r.returncode, command, requests)
    if "failed" not in res and server.proc.poll() is not None:
        res = {"failed": f"the server exited ({server.proc.returncode})", "errors": 1}
    return res if "failed" in res else _per_cpu(res, window)


def bench_env() -> dict[str, str]:
    """The environment of the servers and clients started from here: this
    iocport first on PYTHONPATH, so that they run the package being
    benchmarked whatever the working directory."""
    env = dict(os.environ)
    pkg_parent = str(PACKAGE_DIR.parent)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"]
                                      if env.get("PYTHONPATH") else "")
    return env


def rival_missing(name: str, kind: str) -> str | None:
    """The package server `name` needs when it runs on a rival loop that is
    not installed ('uvloop'), else None: a Python rival named for its loop
    ('uvloop-tls'), or iocport's coroutine handler served from that loop
    ('iocport-async-uvloop')."""
    words = name.split("-")
    if kind == "http-rival":
        need = [p for p in HTTP_RIVAL_NEEDS.get(words[0], ())
                if importlib.util.find_spec(p) is None]
        return " ".join(need) or None
    loop = words[0] if kind == "asyncio" else words[-1] if kind == "iocport" else None
    if loop in RIVAL_PACKAGES and importlib.util.find_spec(RIVAL_PACKAGES[loop]) is None:
        return RIVAL_PACKAGES[loop]
    return None


def missing_note(package: str | None) -> str:
    """The tables' note for a server skipped for want of `package`."""
    return f"not installed: pip install {package}"


def server_missing_note(name: str, kind: str) -> str | None:
    """The tables' note for server `name` when what it needs is not here (a
    Python package, nginx, redis-server, examples/kv.py), else None."""
    pkg = rival_missing(name, kind)
    if pkg:
        return missing_note(pkg)
    if kind == "http-rival" and name == "nginx" and find_tool("nginx") is None:
        return f"not installed: {tool_hint('nginx')}"
    if kind == "resp-rival" and find_tool("redis-server") is None:
        return f"not installed: {tool_hint('redis-server')}"
    if kind == "resp-kv" and kv_script() is None:
        return f"not run: {KV_HINT}"
    return None


def missing_line(packages: set[str]) -> str:
    """One line under the tables: the rivals skipped and how to get them."""
    names = " ".join(sorted(packages))
    return (f"not installed, so not run: {', '.join(sorted(packages))}; "
            f"pip install {names} (or {BENCH_EXTRA}, or --install-rivals)")


# ---- the machine ----------------------------------------------------------

def machine_info() -> dict[str, Any]:
    """What the figures depend on: CPUs, kernel, Python, the rivals'
    versions, and the load average when the run starts."""
    from importlib import metadata
    import platform
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for pkg in ("iocport", *RIVAL_PACKAGES.values(), *HTTP_RIVAL_PACKAGES.values()):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"cpus": os.cpu_count(), "cpu_model": model,
            "kernel": platform.release(),
            "python": platform.python_version(),
            "versions": versions, "loadavg": os.getloadavg()}


# ---- idle connections: one server's resident memory per connection --------

IDLE_FD_MARGIN = 64        # descriptors kept free beyond the N connections
IDLE_PAYLOAD = b"idle-echo-check!"


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def vm_rss(pid: int) -> int:
    """VmRSS of a process in bytes, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def idle_client_main(argv: list[str]) -> int:
    """Client process of the idle scenario: open N connections, one len4
    echo on each (reply checked), print 'ready N', hold them until a line
    arrives on stdin (or stdin closes), then close everything."""
    import socket
    host, port, n = argv[0], int(argv[1]), int(argv[2])
    raise_nofile()
    socks = []
    try:
        for i in range(n):
            s = socket.create_connection((host, port), timeout=10)
            socks.append(s)
            payload = IDLE_PAYLOAD + i.to_bytes(4, "big")
            s.sendall(len(payload).to_bytes(4, "big") + payload)
            want = 4 + len(payload)
            got = b""
            while len(got) < want:
                chunk = s.recv(want - len(got))
                if not chunk:
                    raise RuntimeError(f"connection {i} closed by the server")
                got += chunk
            if got[4:] != payload:
                raise RuntimeError(f"wrong reply on connection {i}")
            s.setblocking(False)
    except Exception as exc:
        print(f"error {len(socks)} {exc}", flush=True)
        return 1
    print(f"ready {len(socks)}", flush=True)
    sys.stdin.readline()
    for s in socks:
        s.close()
    return 0


def idle_fit(n: int) -> tuple[int, str | None]:
    """(N to use, note or None): N lowered when RLIMIT_NOFILE's hard limit
    cannot hold N connections plus a margin (in the client and the server)."""
    limit = raise_nofile()       # inherited by the servers started from here
    if limit < n + IDLE_FD_MARGIN:
        new = max(1, limit - IDLE_FD_MARGIN)
        return new, (f"RLIMIT_NOFILE hard limit {limit} is too low for {n} "
                     f"connections plus {IDLE_FD_MARGIN}: N lowered to {new}")
    return n, None


def measure_idle(srv: ServerProc, n: int, env: dict[str, str], wait: float,
                 cpu: int | None = None) -> dict[str, Any]:
    """One server: VmRSS before, N connections each echoing once, `wait`
    seconds idle, VmRSS after. Returns a dict of figures or {'failed': ...}."""
    rss_before = vm_rss(srv.pid)
    code = ("import sys; from iocport.bench.harness import idle_client_main; "
            "sys.exit(idle_client_main(sys.argv[1:]))")
    client = subprocess.Popen(_pinned(cpu, [sys.executable, "-c", code, srv.host,
                                            str(srv.port), str(n)]),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, text=True)
    stdin, stdout = client.stdin, client.stdout
    assert stdin is not None and stdout is not None     # PIPE
    try:
        t0 = time.monotonic()
        line = stdout.readline()
        setup_s = time.monotonic() - t0
        if not line.startswith("ready "):
            client.kill()
            _, err = client.communicate(timeout=10)
            return {"failed": (line.strip() or err.strip()[-300:] or "client died")}
        opened = int(line.split()[1])
        time.sleep(wait)
        if srv.proc.poll() is not None:
            return {"failed": f"server exited ({srv.proc.returncode})"}
        rss_after = vm_rss(srv.pid)
        stdin.write("done\n")
        stdin.flush()
        client.wait(30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        for f in (stdin, stdout, client.stderr):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
    return {"conns": opened, "rss_before": rss_before, "rss_after": rss_after,
            "bytes_per_conn": (rss_after - rss_before) / opened,
            "setup_s": setup_s, "idle_s": wait}

