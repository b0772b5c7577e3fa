"""``python -m iocport bench``: iocport against its rivals, same harness, same run.

The load comes from ``benchmarks/loadgen.c`` (a native closed-loop client
that checks every reply byte for byte), built with gcc into a cache
directory together with ``benchmarks/c_echo_epoll.c`` (the plain C
baseline).  Each server runs pinned to one CPU, the client to another; each
server is warmed on separate connections before it is measured; servers are
measured in turn (A B A B ...) for several rounds and every ratio is
computed round by round, the median reported.  The headline figure is
messages per server CPU-second (the server's utime+stime from /proc over the
measured window), which judges a server by its cost per message even when
the client is the bottleneck.
"""
import hashlib
import importlib.util
import json
import os
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CFLAGS = ["-O2", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra"]
BENCH_SOURCES = ("loadgen.c", "c_echo_epoll.c")

# (name, kind, extra, full_only); kind: iocport | c | asyncio | threads
SERVERS = [
    ("iocport-python", "iocport", [], False),             # auto backend
    ("iocport-epoll", "iocport", ["--backend", "epoll"], False),
    ("iocport-native", "iocport", ["--native"], False),
    ("c-epoll", "c", [], False),
    ("asyncio", "asyncio", ["--loop", "asyncio"], False),
    ("uvloop", "asyncio", ["--loop", "uvloop"], False),
    ("rloop", "asyncio", ["--loop", "rloop"], False),
    ("iocport-native-epoll", "iocport", ["--native", "--backend", "epoll"], True),
    ("threads", "threads", [], True),
]
RIVAL_PACKAGES = {"uvloop": "uvloop", "rloop": "rloop"}

# (label, A, B, depth or None for any, target, payload size the target is
# set for or None for any); B may be a tuple: the better of those, round by
# round.  Other sizes show the ratio without a target.
RATIOS = [
    ("python handler / best of uvloop,rloop", "iocport-python", ("uvloop", "rloop"), 1, 1.5, 64),
    ("python handler / best of uvloop,rloop", "iocport-python", ("uvloop", "rloop"), 16, 3.5, 64),
    ("python handler / c-epoll", "iocport-python", "c-epoll", 16, 0.85, 64),
    ("python handler / asyncio", "iocport-python", "asyncio", 1, 1.9, 64),
    ("python handler / asyncio", "iocport-python", "asyncio", 16, 4.0, 64),
    ("native / c-epoll", "iocport-native", "c-epoll", None, 1.0, 64),
    ("epoll backend / uring backend", "iocport-epoll", "iocport-python", None, 0.8, None),
]
# The ceiling of the python-handler targets against the Python servers: the
# same ratio with the python handler's CPU cut to its kernel time (its user
# time taken as nil).  The kernel time is the cost of the system calls and
# of the TCP segments they carry (on loopback, the peer's receive too), which
# no user-space work removes; a target above this bound cannot be met
# without less kernel work per message.
BOUNDS = {
    "python handler / best of uvloop,rloop":
        "bound, the python handler's kernel time alone / best of uvloop,rloop",
    "python handler / asyncio": "bound, the python handler's kernel time alone / asyncio",
}


# Latency at a fixed offered load (loadgen --rate: open loop, latency counted
# from each message's scheduled time), below every server's saturation.
LATENCY_SERVERS = ("iocport-python", "iocport-epoll", "c-epoll", "asyncio", "uvloop",
                   "rloop")
LATENCY_RATES = "10000,40000"
# (label, A, B, target: A's p99 over B's at most this)
LATENCY_RATIOS = [("p99 latency, python handler / uvloop", "iocport-python", "uvloop", 1.0)]

# Store each message to a file, then echo it: iocport's overlapped file
# writes against asyncio servers writing through run_in_executor.
# (name, kind, extra); each gets `--store FILE` in a scratch directory.
STORE_SERVERS = [
    ("iocport-store", "iocport", []),
    ("iocport-epoll-store", "iocport", ["--backend", "epoll"]),
    ("asyncio-store", "asyncio", ["--loop", "asyncio"]),
    ("uvloop-store", "asyncio", ["--loop", "uvloop"]),
]
STORE_RATIOS = [("store: python handler / asyncio + run_in_executor", "iocport-store",
                 "asyncio-store"),
                ("store: python handler / uvloop + run_in_executor", "iocport-store",
                 "uvloop-store")]


def add_arguments(p):
    p.add_argument("--full", action="store_true",
                   help="add 4 KiB and 64 KiB payloads and every server variant")
    p.add_argument("--sizes", default=None, metavar="BYTES,...",
                   help="payload sizes of the throughput runs (default 64; "
                        "with --full 64,4096,65536)")
    p.add_argument("--seconds", type=float, default=1.5,
                   help="measured seconds per run (default 1.5)")
    p.add_argument("--rounds", type=int, default=3, help="A B A B rounds (default 3)")
    p.add_argument("--conns", type=int, default=50, help="connections (default 50)")
    p.add_argument("--framing", choices=("len4", "line"), default="len4")
    p.add_argument("--only", default=None,
                   help="comma-separated server names to run (default: all of the suite)")
    p.add_argument("--json", metavar="PATH", help="write every run's figures here")
    p.add_argument("--chart", metavar="PNG", default="iocport-bench.png",
                   help="chart path when matplotlib is installed (default iocport-bench.png)")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--install-rivals", action="store_true",
                   help="pip install uvloop and rloop first")
    p.add_argument("--idle", action="store_true",
                   help="run only the idle-connections memory scenario "
                        "(also part of --full)")
    p.add_argument("--idle-conns", type=int, default=10000,
                   help="connections for the idle scenario (default 10000)")
    p.add_argument("--latency", action="store_true",
                   help="run only the latency-at-fixed-load scenario (also part of --full)")
    p.add_argument("--rates", default=LATENCY_RATES,
                   help="offered loads of the latency scenario, messages per second "
                        f"in all (default {LATENCY_RATES})")
    p.add_argument("--store", action="store_true",
                   help="run only the store-to-disk scenario (also part of --full)")


# ---- building -------------------------------------------------------------

def benchmarks_dir():
    """The directory holding loadgen.c: the repository's benchmarks/ next to
    the package, or a copy shipped inside the package."""
    here = Path(__file__).resolve().parent
    for d in (here.parent / "benchmarks", here / "benchmarks"):
        if all((d / s).is_file() for s in BENCH_SOURCES):
            return d
    raise SystemExit("iocport bench: benchmarks/loadgen.c not found next to the "
                     f"package ({here.parent / 'benchmarks'})")


def cache_dir():
    d = os.environ.get("IOCPORT_BENCH_CACHE")
    if d:
        return Path(d)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "iocport-bench"


def build(source, out_dir=None):
    """Compile one C file of benchmarks/ (cached by content); return the path."""
    cc = os.environ.get("CC") or "gcc"
    if not shutil.which(cc):
        raise SystemExit(f"iocport bench: {cc} not found (needed to build {source})")
    src = benchmarks_dir() / source
    text = src.read_bytes()
    digest = hashlib.sha256(text + " ".join([cc] + CFLAGS).encode()).hexdigest()[:12]
    out_dir = Path(out_dir) if out_dir else cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / f"{src.stem}-{digest}"
    if exe.is_file():
        return exe
    tmp = out_dir / f".{exe.name}.{os.getpid()}"
    r = subprocess.run([cc, *CFLAGS, str(src), "-o", str(tmp)],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"iocport bench: building {source} failed:\n{r.stderr}")
    os.replace(tmp, exe)   # atomic: concurrent builds do not trip over each other
    return exe


# ---- processes ------------------------------------------------------------

def _pinning():
    """(server cpu, client cpu) or (None, None) when pinning is impossible."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2 and shutil.which("taskset"):
        return cpus[0], cpus[1]
    return None, None


def _pinned(cpu, argv):
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


class ServerProc:
    def __init__(self, name, argv, env=None, cpu=None):
        self.name = name
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(_pinned(cpu, argv), stdout=subprocess.PIPE,
                                     stderr=self.log, env=env, text=True)
        self.banner = self._read_banner(20.0)
        addr = self.banner.split()[2]
        host, port = addr.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.pid = self.proc.pid     # taskset execs the server: same pid

    def _read_banner(self, timeout):
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout)
        sel.close()
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("listening on "):
            self.proc.kill()
            self.proc.wait()
            self.log.seek(0)
            err = self.log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} did not start: {line!r} {err}")
        return line.strip()

    def stop(self):
        """SIGTERM; returns the exit status (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        self.proc.stdout.close()
        self.log.close()
        return self.proc.returncode


def server_argv(kind, extra, framing, bench_dir, c_echo):
    if kind == "iocport":
        return [sys.executable, "-m", "iocport", "echo", "--port", "0",
                "--framing", framing, *extra]
    if kind == "c":
        return [str(c_echo), "--port", "0", "--framing", framing]
    rivals = str(bench_dir / "rivals.py")
    return [sys.executable, rivals, kind, "--port", "0", "--framing", framing, *extra]


def run_loadgen(loadgen, server, *, conns, depth, size, framing, seconds,
                warmup=0.2, cpu=None, rate=None):
    """One loadgen run against `server`: closed loop with `depth` messages in
    flight per connection, or open loop at `rate` messages per second."""
    argv = [str(loadgen), "--host", server.host, "--port", str(server.port),
            "--conns", str(conns), "--depth", str(depth), "--size", str(size),
            "--framing", framing, "--seconds", str(seconds),
            "--warmup-seconds", str(warmup), "--server-pid", str(server.pid)]
    if rate:
        argv += ["--rate", str(rate)]
    try:
        r = subprocess.run(_pinned(cpu, argv), capture_output=True, text=True,
                           timeout=seconds + warmup + 30)
    except subprocess.TimeoutExpired:
        return {"failed": "loadgen timed out", "errors": 1}
    lines = r.stdout.strip().splitlines()
    try:
        res = json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"failed": f"loadgen exit {r.returncode}: {r.stderr.strip()[-300:]}",
                "errors": 1}
    if res.get("server_cpu_s"):
        res["msgs_per_cpu_s"] = res["msgs"] / res["server_cpu_s"]
    else:
        res["msgs_per_cpu_s"] = None
    return res


# ---- reporting ------------------------------------------------------------

class Progress:
    def __init__(self, total):
        self.total, self.done = total, 0
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()

    def step(self, what):
        self.done += 1
        width = 30
        fill = int(width * self.done / self.total)
        bar = "#" * fill + "." * (width - fill)
        text = (f"[{bar}] {self.done:3d}/{self.total} "
                f"{time.monotonic() - self.t0:5.0f}s  {what}")
        if self.tty:
            sys.stderr.write("\r" + text[:100].ljust(100))
            if self.done == self.total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def scenario_name(sc):
    size = sc["size"]
    text = f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"
    if sc.get("rate"):
        return f"{text} at {sc['rate']:,} msgs/s"
    prefix = "store, " if sc.get("mode") == "store" else ""
    return f"{prefix}{text}, depth {sc['depth']}"


def print_tables(scenarios, names, results, notes):
    out = []
    for sc in scenarios:
        key = scenario_name(sc)
        loop = "open loop, " if sc.get("rate") else ""
        out.append(f"\n## {key}, {sc['conns']} connections, {loop}{sc['framing']} "
                   f"(medians of {sc['rounds']} rounds)\n")
        out.append("| server | msgs/s | p50 us | p99 us | p99.9 us | errors "
                   "| server CPU % | of it in the kernel | msgs per server CPU-s |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in names:
            if sc.get("servers") and name not in sc["servers"]:
                continue
            if name in notes:
                out.append(f"| {name} | {notes[name]} | | | | | | | |")
                continue
            runs = results[key].get(name, [])
            ok = [r for r in runs if "failed" not in r]
            if not ok:
                why = runs[0]["failed"] if runs else "not run"
                out.append(f"| {name} | failed: {why[:60]} | | | | | | | |")
                continue
            errs = sum(r.get("errors", 0) for r in runs)
            cpu_pct = _median([100 * r["server_cpu_s"] / r["seconds"]
                               for r in ok if r.get("server_cpu_s") is not None])
            sys_pct = _median([r["server_sys_s"] / r["server_cpu_s"]
                               for r in ok if r.get("server_cpu_s")
                               and r.get("server_sys_s") is not None])
            out.append(
                f"| {name} | {_fmt(_median([r['msgs_per_sec'] for r in ok]), ',.0f')} "
                f"| {_fmt(_median([r['p50_us'] for r in ok]), '.0f')} "
                f"| {_fmt(_median([r['p99_us'] for r in ok]), '.0f')} "
                f"| {_fmt(_median([r['p999_us'] for r in ok]), '.0f')} "
                f"| {errs} | {_fmt(cpu_pct, '.0f')} | {_fmt(sys_pct, '.0%')} "
                f"| {_fmt(_median([r['msgs_per_cpu_s'] for r in ok]), ',.0f')} |")
    return "\n".join(out)


def _figure(run, field):
    """One run's figure; "msgs_per_sys_s" (messages per second of the
    server's kernel time) is derived from the loadgen's counts."""
    if field == "msgs_per_sys_s":
        sys_s = run.get("server_sys_s")
        return run["msgs"] / sys_s if sys_s and run.get("msgs") else None
    return run.get(field)


def _pair_ratios(results, key, a, b, field, a_field=None):
    """Round-by-round ratios of `field`, A over B (B: a name or the better of
    a tuple of names, per round); A's figure is `a_field` when given."""
    ra = results[key].get(a, [])
    bs = b if isinstance(b, tuple) else (b,)
    rbs = [results[key].get(x, []) for x in bs]
    ratios = []
    for i, run_a in enumerate(ra):
        va = _figure(run_a, a_field or field)
        vb = [r[i].get(field) for r in rbs if i < len(r) and r[i].get(field)]
        if va and vb:
            ratios.append(va / max(vb))
    return ratios


def ratio_table(scenarios, results, banners):
    """The ratios of every scenario run: throughput targets (RATIOS) on the
    closed-loop scenarios, p99 latency (LATENCY_RATIOS) on the open-loop
    ones, and the store scenario's figures (STORE_RATIOS, no target)."""
    out = ["\n## Ratios (median of the round-by-round ratios)\n",
           "| ratio | scenario | per server CPU-s | msgs/s | p99 | rounds' range | target | met |",
           "|---|---|---:|---:|---:|---:|---|---|"]
    rows = []

    def row(label, a, b, sc, target=None, field="msgs_per_cpu_s", most=False, bound=False):
        key = scenario_name(sc)
        # a bound row has a figure per CPU-second only
        each = {f: _pair_ratios(results, key, a, b, f,
                                "msgs_per_sys_s" if bound else None)
                for f in (("msgs_per_cpu_s",) if bound
                          else ("msgs_per_cpu_s", "msgs_per_sec", "p99_us"))}
        fig = {f: _median(each.get(f, [])) for f in ("msgs_per_cpu_s", "msgs_per_sec", "p99_us")}
        v = fig[field]
        if v is None or target is None:
            met = "-"
        elif bound:
            met = "in reach" if v >= target else "out of reach"
        else:
            met = "yes" if (v <= target if most else v >= target) else "NO"
        goal = "" if target is None else f"{'<=' if most else '>='} {target}"
        # how far the judged ratio moved between rounds
        spread = f"{min(each[field]):.2f}-{max(each[field]):.2f}" if each[field] else "-"
        out.append(f"| {label} | {key} | {_fmt(fig['msgs_per_cpu_s'], '.2f')} "
                   f"| {_fmt(fig['msgs_per_sec'], '.2f')} | {_fmt(fig['p99_us'], '.2f')} "
                   f"| {spread} | {goal} | {met} |")
        rows.append({"ratio": label, "scenario": key, "per_cpu": fig["msgs_per_cpu_s"],
                     "throughput": fig["msgs_per_sec"], "p99": fig["p99_us"],
                     "rounds": each[field], "target": target, "target_is_max": most,
                     "bound": bound})

    for sc in scenarios:
        mode = "rate" if sc.get("rate") else sc.get("mode", "closed")
        if mode == "closed":
            for label, a, b, depth, target, size in RATIOS:
                if b == "iocport-python" and "backend uring" not in banners.get(b, ""):
                    continue   # auto fell back to epoll: no uring figures to compare
                if depth is None or sc["depth"] == depth:
                    goal = target if size in (None, sc["size"]) else None
                    row(label, a, b, sc, goal)
                    if label in BOUNDS and goal is not None:
                        row(BOUNDS[label], a, b, sc, goal, bound=True)
        elif mode == "rate":
            for label, a, b, target in LATENCY_RATIOS:
                row(label, a, b, sc, target, field="p99_us", most=True)
        else:
            for label, a, b in STORE_RATIOS:
                row(label, a, b, sc)
    return "\n".join(out), rows


def write_chart(path, scenarios, names, results):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    keys = [scenario_name(sc) for sc in scenarios]
    # One panel per scenario, each on its own scale: 64 KiB figures are a
    # hundredth of 64 B ones and would not show on a shared axis.
    fig, axes = plt.subplots(1, len(keys), squeeze=False,
                             figsize=(max(6, 2.3 * len(keys) + 1.5), 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], keys):
        for j, name in enumerate(names):
            ok = [r for r in results[key].get(name, []) if "failed" not in r]
            v = _median([r["msgs_per_cpu_s"] for r in ok])
            ax.bar(j, (v or 0) / 1000, 0.8, color=colors[j % len(colors)], label=name)
        ax.set_title(key, fontsize="medium")
        ax.set_xticks([])
        ax.tick_params(axis="y", labelsize="small")
    axes[0][0].set_ylabel("thousand messages per server CPU-second")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize="small")
    fig.suptitle("echo: messages per server CPU-second (higher is better)")
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---- idle connections: resident memory per connection ---------------------

# (name, kind, extra): the servers of the idle scenario
IDLE_SERVERS = [
    ("iocport-python", "iocport", []),                  # default backend
    ("iocport-epoll", "iocport", ["--backend", "epoll"]),
    ("c-epoll", "c", []),
    ("asyncio", "asyncio", ["--loop", "asyncio"]),
    ("uvloop", "asyncio", ["--loop", "uvloop"]),
    ("rloop", "asyncio", ["--loop", "rloop"]),
]
IDLE_TARGET = 0.5          # iocport-python / uvloop bytes per connection, at most
IDLE_WAIT = 2.0            # seconds of silence before the second reading
IDLE_FD_MARGIN = 64        # descriptors kept free beyond the N connections
IDLE_PAYLOAD = b"idle-echo-check!"


def raise_nofile():
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


def vm_rss(pid):
    """VmRSS of a process in bytes, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def idle_client_main(argv):
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


def idle_fit(n):
    """(N to use, note or None): N lowered when RLIMIT_NOFILE's hard limit
    cannot hold N connections plus a margin (in the client and the server)."""
    limit = raise_nofile()       # inherited by the servers started from here
    if limit < n + IDLE_FD_MARGIN:
        new = max(1, limit - IDLE_FD_MARGIN)
        return new, (f"RLIMIT_NOFILE hard limit {limit} is too low for {n} "
                     f"connections plus {IDLE_FD_MARGIN}: N lowered to {new}")
    return n, None


def measure_idle(srv, n, env, cpu=None, wait=IDLE_WAIT):
    """One server: VmRSS before, N connections each echoing once, `wait`
    seconds idle, VmRSS after. Returns a dict of figures or {'failed': ...}."""
    rss_before = vm_rss(srv.pid)
    code = ("import sys; from iocport.bench import idle_client_main; "
            "sys.exit(idle_client_main(sys.argv[1:]))")
    client = subprocess.Popen(_pinned(cpu, [sys.executable, "-c", code, srv.host,
                                            str(srv.port), str(n)]),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, text=True)
    try:
        t0 = time.monotonic()
        line = client.stdout.readline()
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
        client.stdin.write("done\n")
        client.stdin.flush()
        client.wait(30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        for f in (client.stdin, client.stdout, client.stderr):
            try:
                f.close()
            except OSError:
                pass
    return {"conns": opened, "rss_before": rss_before, "rss_after": rss_after,
            "bytes_per_conn": (rss_after - rss_before) / opened,
            "setup_s": setup_s, "idle_s": wait}


def run_idle(n=10000, only=None, framing="len4", wait=IDLE_WAIT):
    """The idle scenario over IDLE_SERVERS (or the names in `only`). Returns
    {'n', 'requested_n', 'note', 'results', 'notes', 'banners', 'ratio'}."""
    bench_dir = benchmarks_dir()
    c_echo = build("c_echo_epoll.c")
    server_cpu, client_cpu = _pinning()
    requested = n
    n, note = idle_fit(n)
    env = _bench_env()
    chosen = [s for s in IDLE_SERVERS if only is None or s[0] in only]
    results, notes, banners = {}, {}, {}
    for name, kind, extra in chosen:
        if _missing_rival(name, kind):
            notes[name] = "not installed"
            continue
        try:
            srv = ServerProc(name, server_argv(kind, extra, framing, bench_dir, c_echo),
                             env=env, cpu=server_cpu)
        except RuntimeError as exc:
            notes[name] = f"failed to start: {str(exc)[:80]}"
            continue
        banners[name] = srv.banner
        try:
            results[name] = measure_idle(srv, n, env, cpu=client_cpu, wait=wait)
        finally:
            rc = srv.stop()
        if rc != 0:
            results[name]["exit"] = rc
        sys.stderr.write(f"idle: {name} done\n")
    a = results.get("iocport-python", {}).get("bytes_per_conn")
    b = results.get("uvloop", {}).get("bytes_per_conn")
    ratio = a / b if a is not None and b else None
    return {"n": n, "requested_n": requested, "note": note, "wait_s": wait,
            "results": results, "notes": notes, "banners": banners,
            "ratio": {"label": "iocport-python / uvloop bytes per connection",
                      "value": ratio, "target_max": IDLE_TARGET,
                      "met": None if ratio is None else ratio <= IDLE_TARGET}}


def idle_table(idle):
    out = [f"\n## Idle connections: {idle['n']} connections, one len4 echo each, "
           f"then {idle['wait_s']:g} s idle\n"]
    if idle["note"]:
        out.append(f"note: {idle['note']}\n")
    out.append("| server | RSS before (KiB) | RSS after (KiB) | bytes per connection |")
    out.append("|---|---:|---:|---:|")
    for name, _, _ in IDLE_SERVERS:
        if name in idle["notes"]:
            out.append(f"| {name} | {idle['notes'][name]} | | |")
        elif name in idle["results"]:
            r = idle["results"][name]
            if "failed" in r:
                out.append(f"| {name} | failed: {r['failed'][:60]} | | |")
            else:
                out.append(f"| {name} | {r['rss_before'] // 1024:,} | "
                           f"{r['rss_after'] // 1024:,} | {r['bytes_per_conn']:,.0f} |")
    r = idle["ratio"]
    met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
    out.append(f"\n{r['label']}: {_fmt(r['value'], '.2f')} "
               f"(target <= {r['target_max']}; met: {met})")
    return "\n".join(out)


def run_idle_only(args):
    idle = run_idle(args.idle_conns, only=set(args.only.split(",")) if args.only else None,
                    framing="len4")
    print("# iocport bench --idle")
    print(f"\n{machine_line(machine_info())}")
    print(idle_table(idle))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"idle": idle}, f, indent=1)
    failed = [n for n, r in idle["results"].items() if "failed" in r]
    return 1 if failed else 0


# ---- the suite ------------------------------------------------------------

def machine_info():
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
    versions = {}
    for pkg in ("iocport", *RIVAL_PACKAGES.values()):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"cpus": os.cpu_count(), "cpu_model": model,
            "kernel": platform.release(),
            "python": platform.python_version(),
            "versions": versions, "loadavg": os.getloadavg()}


def machine_line(info):
    vers = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    load = ", ".join(f"{x:.2f}" for x in info["loadavg"])
    return (f"{info['cpus']} CPUs ({info['cpu_model'] or 'unknown model'}), "
            f"Linux {info['kernel']}, Python {info['python']}; {vers}; "
            f"load average at the start: {load}")


def _bench_env():
    env = dict(os.environ)
    pkg_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"]
                                      if env.get("PYTHONPATH") else "")
    return env


def _missing_rival(name, kind):
    loop = name.split("-")[0]
    return kind == "asyncio" and loop in RIVAL_PACKAGES and \
        importlib.util.find_spec(RIVAL_PACKAGES[loop]) is None


def run_group(servers, scenarios, args, progress, tools):
    """Start `servers` [(name, kind, extra)], warm each up, then run every
    scenario round by round, servers in turn (A B A B).  Returns (results by
    scenario name then server, notes, banners, exit statuses)."""
    loadgen, c_echo, bench_dir, server_cpu, client_cpu, env = tools
    results = {scenario_name(sc): {} for sc in scenarios}
    notes = {name: "not installed" for name, kind, _ in servers
             if _missing_rival(name, kind)}
    started, banners, exits = {}, {}, {}
    try:
        for name, kind, extra in servers:
            if name in notes:
                continue
            try:
                srv = ServerProc(name, server_argv(kind, extra, args.framing, bench_dir,
                                                   c_echo), env=env, cpu=server_cpu)
            except RuntimeError as exc:
                notes[name] = f"failed to start: {str(exc)[:80]}"
                progress.step(f"{name}: failed to start")
                continue
            started[name] = srv
            banners[name] = srv.banner
            # warm-up, on connections of its own
            warm = run_loadgen(loadgen, srv, conns=args.conns, depth=16, size=64,
                               framing=args.framing, seconds=0.5, warmup=0, cpu=client_cpu)
            if "failed" in warm or warm.get("errors"):
                notes[name] = f"warm-up failed: {warm.get('failed', 'wrong replies')}"
            progress.step(f"warm-up {name}")
        for sc in scenarios:
            key = scenario_name(sc)
            for rnd in range(sc["rounds"]):
                for name, _, _ in servers:
                    srv = started.get(name)
                    if srv is None or name in notes or \
                            (sc.get("servers") and name not in sc["servers"]):
                        continue
                    res = run_loadgen(loadgen, srv, conns=sc["conns"], depth=sc["depth"],
                                      size=sc["size"], framing=sc["framing"],
                                      seconds=sc["seconds"], cpu=client_cpu,
                                      rate=sc.get("rate"), warmup=sc.get("warmup", 0.2))
                    results[key].setdefault(name, []).append(res)
                    progress.step(f"{key} round {rnd + 1} {name}")
    finally:
        for name, srv in started.items():
            exits[name] = srv.stop()
    for name, _, _ in servers:
        if name not in started and name not in notes:
            notes[name] = "not run"
    return results, notes, banners, exits


def _positive_ints(text, option):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise SystemExit(f"iocport bench: {option} wants positive integers, got {text!r}")
    return values


def _sizes(text):
    return _positive_ints(text, "--sizes")


def _rates(text):
    return _positive_ints(text, "--rates")


def plan(args, store_dir):
    """The groups to run: [(title, servers, scenarios)]."""
    common = {"conns": args.conns, "framing": args.framing, "rounds": args.rounds,
              "seconds": args.seconds}
    only = set(args.only.split(",")) if args.only else None
    groups = []
    just = args.latency or args.store or args.idle
    if args.full or not just:
        chosen = [s for s in SERVERS if args.full or not s[3]]
        if only:
            chosen = [s for s in SERVERS if s[0] in only]
        sizes = _sizes(args.sizes) if args.sizes else [64, 4096, 65536] if args.full else [64]
        groups.append(("throughput", [s[:3] for s in chosen],
                       [dict(common, size=size, depth=d, mode="closed")
                        for size in sizes for d in (1, 16)]))
    if args.full or args.latency:
        servers = [s[:3] for s in SERVERS if s[0] in LATENCY_SERVERS and
                   (only is None or s[0] in only)]
        # open loop: a longer window for steadier tails, a longer warm-up
        # so the connections' first messages are not counted
        groups.append(("latency", servers,
                       [dict(common, size=64, depth=1, rate=r, seconds=max(2.0, args.seconds),
                             warmup=0.5, servers=LATENCY_SERVERS) for r in _rates(args.rates)]))
    if args.full or args.store:
        servers = [(name, kind, [*extra, "--store", str(Path(store_dir) / f"{name}.log")])
                   for name, kind, extra in STORE_SERVERS if only is None or name in only]
        groups.append(("store", servers, [dict(common, size=64, depth=d, mode="store")
                                          for d in (1, 16)]))
    return groups


def run(args):
    if args.install_rivals:
        subprocess.run([sys.executable, "-m", "pip", "install", *RIVAL_PACKAGES.values()],
                       check=False)
    info = machine_info()
    if info["loadavg"][0] > 0.5:
        sys.stderr.write(f"iocport bench: load average {info['loadavg'][0]:.2f}: another "
                         "job is running; its CPU use will show in the figures\n")
    server_cpu, client_cpu = _pinning()
    tools = (build("loadgen.c"), build("c_echo_epoll.c"), benchmarks_dir(),
             server_cpu, client_cpu, _bench_env())
    with tempfile.TemporaryDirectory(prefix="iocport-bench-store-") as store_dir:
        groups = plan(args, store_dir)
        if not groups:
            return run_idle_only(args)
        steps = sum(len(servers) + sum(sc["rounds"] * len(
            [s for s in servers if not sc.get("servers") or s[0] in sc["servers"]])
            for sc in scenarios) for _, servers, scenarios in groups)
        progress = Progress(steps)
        t_start = time.monotonic()
        ran = [(title, servers, scenarios, *run_group(servers, scenarios, args, progress, tools))
               for title, servers, scenarios in groups]
        elapsed = time.monotonic() - t_start

    print("# iocport bench")
    print(f"\n{machine_line(info)}")
    print(f"server on CPU {server_cpu}, client on CPU {client_cpu}"
          if server_cpu is not None else "not pinned (taskset or a second CPU missing)")
    print(f"{args.conns} connections, {args.seconds} s measured per run, "
          f"{args.rounds} rounds, {elapsed:.0f} s in all")
    all_results, all_rows, all_notes, all_banners, bad_exit = {}, [], {}, {}, {}
    for title, servers, scenarios, results, notes, banners, exits in ran:
        names = [s[0] for s in servers]
        for name in names:
            if name in banners:
                print(f"- {name}: {banners[name]}")
        print(print_tables(scenarios, names, results, notes))
        text, rows = ratio_table(scenarios, results, banners)
        print(text)
        all_results.update(results)
        all_rows += rows
        all_notes.update(notes)
        all_banners.update(banners)
        bad_exit.update({n: rc for n, rc in exits.items() if rc != 0})
    idle = None
    if args.full or args.idle:
        idle = run_idle(args.idle_conns,
                        only=set(args.only.split(",")) if args.only else None)
        print(idle_table(idle))
    if bad_exit:
        print(f"\nservers that did not exit 0 on SIGTERM: {bad_exit}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info,
                       "groups": [{"title": t, "servers": [s[0] for s in sv],
                                   "scenarios": scs} for t, sv, scs, *_ in ran],
                       "results": all_results, "notes": all_notes,
                       "banners": all_banners, "ratios": all_rows, "idle": idle},
                      f, indent=1)
    if not args.no_chart and args.chart:
        for title, servers, scenarios, results, *_ in ran:
            if title == "throughput" and write_chart(
                    args.chart, scenarios, [s[0] for s in servers], results):
                print(f"\nchart: {args.chart}")
    total_errors = sum(r.get("errors", 0) for per in all_results.values()
                       for runs in per.values() for r in runs)
    if idle and any("failed" in r for r in idle["results"].values()):
        total_errors += 1
    return 1 if total_errors else 0
