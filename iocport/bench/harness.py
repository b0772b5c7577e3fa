"""The machinery of the benchmark, which knows no plan: building the C tools
of benchmarks/, starting and stopping servers, pinning them and the clients
to CPUs, one load-generator run, one idle-memory reading, and what the
machine is."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import selectors
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
    """The command line of a server of `kind` (iocport, c, c-tls, asyncio or
    threads), with `extra` options."""
    if kind == "c-tls":     # built by then (bench --tls builds it first): cached
        return [str(build_tls("c_echo")), "--port", "0", "--framing", framing, *extra]
    if kind == "iocport":
        return [sys.executable, "-m", "iocport", "echo", "--port", "0",
                "--framing", framing, *extra]
    if kind == "c":
        return [str(c_echo), "--port", "0", "--framing", framing]
    rivals = str(bench_dir / "rivals.py")
    return [sys.executable, rivals, kind, "--port", "0", "--framing", framing, *extra]


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
    loop = words[0] if kind == "asyncio" else words[-1] if kind == "iocport" else None
    if loop in RIVAL_PACKAGES and importlib.util.find_spec(RIVAL_PACKAGES[loop]) is None:
        return RIVAL_PACKAGES[loop]
    return None


def missing_note(package: str | None) -> str:
    """The tables' note for a server skipped for want of `package`."""
    return f"not installed: pip install {package}"


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
    for pkg in ("iocport", *RIVAL_PACKAGES.values()):
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

