"""What the benchmark runs and how it is judged: the servers of each
scenario (throughput, latency at a fixed load, store-to-disk, TLS, coroutine
handlers, HTTP, RESP, idle memory), the ratios and targets that apply to each, the plan
the options make of them, and the A B A B rounds that run a plan."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Protocol

from .harness import (Run, ServerProc, benchmarks_dir, bench_env, build, http_check,
                      idle_fit, measure_idle, missing_note, pinning, resp_check,
                      rival_missing, run_http_client, run_loadgen, run_resp_client,
                      server_argv, server_missing_note)

# A server to run: (name, kind, extra options); kind: iocport | c | c-tls |
# asyncio | threads | iocport-http | http-rival | resp-kv | resp-rival
ServerSpec = tuple[str, str, list[str]]
# A scenario: size, depth, conns, framing, rounds, seconds, and its mode
# ("closed", "store", "tls", "handshake", "async", "http", "resp") or rate
# (open loop); "servers" limits it to those; an "http" or "resp" one names
# its "client" (h2load, wrk, redis-benchmark), a "resp" one its "command".
Scenario = dict[str, Any]
# A group of the plan: (title, its servers, its scenarios)
Group = tuple[str, list[ServerSpec], list[Scenario]]
# Every run's figures: by scenario name, then by server, one per round
Results = dict[str, dict[str, list[Run]]]
# What run_group() runs with: loadgen, the C echo server, benchmarks/, the
# server's and the client's CPU (None: not pinned), the environment; with
# bench --tls, the load generator's TLS build after them
Tools = (tuple[Path, Path, Path, int | None, int | None, dict[str, str]]
         | tuple[Path, Path, Path, int | None, int | None, dict[str, str], Path])


class Steps(Protocol):
    """What run_group() reports its progress to (report.Progress)."""

    def step(self, what: str) -> None: ...


# ---- the scenarios: their servers, ratios and targets ---------------------

# Throughput, closed loop (each connection keeps `depth` messages in flight):
# (name, kind, extra, full_only); kind: iocport | c | asyncio | threads
SERVERS: list[tuple[str, str, list[str], bool]] = [
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

# (label, A, B, depth or None for any, target, payload size the target is
# set for or None for any); B may be a tuple: the better of those, round by
# round.  Other sizes show the ratio without a target.
RATIOS: list[tuple[str, str, str | tuple[str, ...], int | None, float, int | None]] = [
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
    "TLS: python handler / best of uvloop,asyncio":
        "bound, the python handler's kernel time alone / best of uvloop,asyncio (TLS)",
    "async handler / uvloop Protocol":
        "bound, the async handler's kernel time alone / uvloop Protocol",
    "async handler / uvloop streams":
        "bound, the async handler's kernel time alone / uvloop streams",
    "http: python handler / best Python server":
        "bound, the python handler's kernel time alone / best Python server (HTTP)",
    "resp: kv.py / redis-server": "bound, kv.py's kernel time alone / redis-server",
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
STORE_SERVERS: list[ServerSpec] = [
    ("iocport-store", "iocport", []),
    ("iocport-epoll-store", "iocport", ["--backend", "epoll"]),
    ("asyncio-store", "asyncio", ["--loop", "asyncio"]),
    ("uvloop-store", "asyncio", ["--loop", "uvloop"]),
]
STORE_RATIOS = [("store: python handler / asyncio + run_in_executor", "iocport-store",
                 "asyncio-store"),
                ("store: python handler / uvloop + run_in_executor", "iocport-store",
                 "uvloop-store")]

# TLS (--tls): the echo over TLS 1.3 (the load generator offers only
# TLS_AES_128_GCM_SHA256), every server with the same certificate, beside
# the same servers in plaintext (the cost of TLS), in one group so that all
# of them alternate round by round.  A name ending in "-tls" is a TLS server
# (the load generator's TLS build drives it); each gets the certificate's
# options from the plan.  (name, kind, extra)
TLS_SERVERS: list[ServerSpec] = [
    ("iocport-python-tls", "iocport", []),
    ("iocport-native-tls", "iocport", ["--native"]),
    ("c-tls", "c-tls", []),
    ("asyncio-tls", "asyncio", ["--loop", "asyncio"]),
    ("uvloop-tls", "asyncio", ["--loop", "uvloop"]),
    ("iocport-python", "iocport", []),
    ("iocport-native", "iocport", ["--native"]),
    ("c-epoll", "c", []),
    ("asyncio", "asyncio", ["--loop", "asyncio"]),
    ("uvloop", "asyncio", ["--loop", "uvloop"]),
]
TLS_SIZES = (64, 4096)
# (label, A, B, depth or None, target, size the target is set for or None)
TLS_RATIOS: list[tuple[str, str, str | tuple[str, ...], int | None, float | None,
                       int | None]] = [
    ("TLS: python handler / best of uvloop,asyncio", "iocport-python-tls",
     ("uvloop-tls", "asyncio-tls"), 1, 1.5, 64),
    ("TLS: python handler / best of uvloop,asyncio", "iocport-python-tls",
     ("uvloop-tls", "asyncio-tls"), 16, 2.0, 64),
    ("TLS: native / c-tls", "iocport-native-tls", "c-tls", None, 0.9, None),
    # no target: how far the same TLS work in plain C gets against the same
    # rivals, the reference for the python handler's targets
    ("TLS: c-tls / best of uvloop,asyncio", "c-tls", ("uvloop-tls", "asyncio-tls"),
     None, None, None),
]
# The cost of TLS: each server's TLS figure over its plaintext one, round
# by round.  (TLS server, plaintext server)
TLS_PAIRS = [("iocport-python-tls", "iocport-python"),
             ("iocport-native-tls", "iocport-native"),
             ("c-tls", "c-epoll"),
             ("asyncio-tls", "asyncio"),
             ("uvloop-tls", "uvloop")]
# Handshakes: a new TLS connection per message (connect, handshake, one
# 64-byte message, its reply, close_notify, close), 50 at a time.
HANDSHAKE_SERVERS = ("iocport-python-tls", "uvloop-tls")
HANDSHAKE_RATIOS = [("handshakes: python handler / uvloop", "iocport-python-tls",
                     "uvloop-tls")]


def is_tls(name: str) -> bool:
    """Whether server `name` speaks TLS (the load generator's TLS build)."""
    return name.endswith("-tls")


def tls_server_args(kind: str, cert: str | Path, key: str | Path) -> list[str]:
    """The options that give a server of `kind` the certificate."""
    if kind == "c-tls":
        return ["--cert", str(cert), "--key", str(key)]
    return ["--tls-cert", str(cert), "--tls-key", str(key)]


# Coroutine handlers (--async): `echo --async` (the echo handler as an
# `async def`, on asyncio's loop, the command's default) against uvloop
# running the throughput group's Protocol and the idiomatic streams server
# (start_server, readexactly, write, drain), with the same handler on
# uvloop's loop and the plain (sync) handler beside them for context, in
# one group so that all of them alternate round by round.  (name, kind, extra)
ASYNC_SERVERS: list[ServerSpec] = [
    ("iocport-async", "iocport", ["--async"]),
    ("iocport-async-uvloop", "iocport", ["--async", "--loop", "uvloop"]),
    ("iocport-python", "iocport", []),
    ("uvloop", "asyncio", ["--loop", "uvloop"]),
    ("uvloop-streams", "asyncio", ["--loop", "uvloop", "--streams"]),
]
ASYNC_SIZES = (64,)
# (label, A, B, depth or None, target, size the target is set for or None)
ASYNC_RATIOS: list[tuple[str, str, str | tuple[str, ...], int | None, float | None,
                         int | None]] = [
    ("async handler / uvloop Protocol", "iocport-async", "uvloop", 1, 1.2, 64),
    ("async handler / uvloop Protocol", "iocport-async", "uvloop", 16, 1.5, 64),
    ("async handler / uvloop streams", "iocport-async", "uvloop-streams", 1, 1.5, 64),
    ("async handler / uvloop streams", "iocport-async", "uvloop-streams", 16, 5.0, 64),
    # no target: the same handler served from uvloop's loop, and the plain
    # handler, the async handler's ceiling
    ("async handler on uvloop / uvloop Protocol", "iocport-async-uvloop", "uvloop",
     None, None, None),
    ("async handler on uvloop / uvloop streams", "iocport-async-uvloop", "uvloop-streams",
     None, None, None),
    ("async handler / sync handler", "iocport-async", "iocport-python", None, None, None),
    ("sync handler / uvloop Protocol", "iocport-python", "uvloop", None, None, None),
]


# HTTP/1.1 (--http): GET / answered 200 text/plain "hello, world" on 50
# keep-alive connections, judged by requests per server CPU-second (every
# process of the server's tree counted), driven by h2load --h1 with 1 and
# 16 requests in flight per connection and by wrk (1 in flight); iocport
# (`python -m iocport http`, the Python handler, and --native) against
# benchmarks/http_rivals.py's servers, all alternating round by round.
# (name, kind, extra); an http-rival's extra is its http_rivals.py arguments.
HTTP_SERVERS: list[ServerSpec] = [
    ("iocport-python", "iocport-http", []),
    ("iocport-native", "iocport-http", ["--native"]),
    ("granian-rsgi", "http-rival", ["granian", "--interface", "rsgi"]),
    ("granian-asgi", "http-rival", ["granian", "--interface", "asgi"]),
    ("uvicorn", "http-rival", ["uvicorn"]),
    ("socketify", "http-rival", ["socketify"]),
    ("nginx", "http-rival", ["nginx"]),
]
# The Python servers: the python handler's targets are against the best of
# them, round by round.
HTTP_PYTHON = ("granian-rsgi", "granian-asgi", "uvicorn", "socketify")
# (client, requests in flight per connection) of the throughput scenarios:
# wrk cannot pipeline
HTTP_RUNS = (("h2load", 1), ("h2load", 16), ("wrk", 1))
# (label, A, B, depth or None for any, target or None, client the target is
# set for or None for any); B a tuple: the best of those, round by round.
HTTP_RATIOS: list[tuple[str, str, str | tuple[str, ...], int | None, float | None,
                        str | None]] = [
    ("http: python handler / best Python server", "iocport-python", HTTP_PYTHON, 1, 2.0, None),
    ("http: python handler / best Python server", "iocport-python", HTTP_PYTHON, 16, 3.0,
     None),
    ("http: native / nginx", "iocport-native", "nginx", 1, 1.0, None),
    ("http: native / nginx", "iocport-native", "nginx", 16, 3.0, None),
    # no target: the C anchor against the Python servers, and the python
    # handler against its own ceiling
    ("http: nginx / best Python server", "nginx", HTTP_PYTHON, None, None, None),
    ("http: python handler / native", "iocport-python", "iocport-native", None, None, None),
]
# Latency at a fixed offered load: h2load --rps (a rate per connection,
# requests in all over the connections), one request in flight per
# connection, p99 from its per-request log, the first 0.5 s left out.
# Its latency counts from each request's send, not from a schedule: a
# server that falls behind is not charged for the queueing (this is no
# wrk2), so the rate is well below every server's saturation.
HTTP_LATENCY_RATE = 10000
HTTP_LATENCY_SERVERS = ("iocport-python", *HTTP_PYTHON)
# (label, A, B, target: A's p99 over B's at most this); B a tuple: the one
# with the lowest p99, round by round
HTTP_LATENCY_RATIOS: list[tuple[str, str, str | tuple[str, ...], float]] = [
    ("http p99 latency, python handler / best Python server", "iocport-python", HTTP_PYTHON,
     1.0)]


def is_http(kind: str) -> bool:
    """Whether a server of `kind` speaks HTTP (bench --http's)."""
    return kind in ("iocport-http", "http-rival")


# RESP (--resp): redis-benchmark (GET and SET, 50 clients, -P 1 and -P 16)
# against examples/kv.py (a Redis-compatible server in plain Python on
# iocport) and Debian's redis-server with persistence off, and the same
# with an append-only file synced every second (SET, -P 1), all in one
# group so that all alternate round by round; requests per server
# CPU-second over each server's process tree.  (name, kind, extra); a name
# ending in "-aof" is the append-only pair (kv.py gets --aof FILE in the
# plan's scratch directory, redis-server its own temporary directory).
RESP_SERVERS: list[ServerSpec] = [
    ("kv.py", "resp-kv", []),
    ("redis-server", "resp-rival", ["redis"]),
    ("kv.py-aof", "resp-kv", ["--fsync", "everysec"]),
    ("redis-server-aof", "resp-rival", ["redis", "--appendfsync", "everysec"]),
]
# (command, -P) of the scenarios with persistence off, and with the
# append-only file; SET before GET, so that GET finds the key
RESP_RUNS = (("SET", 1), ("GET", 1), ("SET", 16), ("GET", 16))
RESP_AOF_RUNS = (("SET", 1),)
# A run's -n: the server's rate in its warm-up run (this many requests per
# connection and command in flight) times --seconds
RESP_WARM_REQUESTS = 100
# (label, A, B, -P or None for any, target or None, command the target is
# set for or None for any); a row where A and B are both in the scenario
RESP_RATIOS: list[tuple[str, str, str, int | None, float | None, str | None]] = [
    ("resp: kv.py / redis-server", "kv.py", "redis-server", 1, 1.0, None),
    ("resp: kv.py / redis-server", "kv.py", "redis-server", 16, 0.5, None),
    ("resp: kv.py AOF everysec / redis-server appendonly everysec", "kv.py-aof",
     "redis-server-aof", 1, 0.8, "SET"),
]


def is_resp(kind: str) -> bool:
    """Whether a server of `kind` speaks RESP (bench --resp's)."""
    return kind in ("resp-kv", "resp-rival")


# Idle connections: the resident memory that each costs a server.
# (name, kind, extra): the servers of the idle scenario
IDLE_SERVERS: list[ServerSpec] = [
    ("iocport-python", "iocport", []),                  # default backend
    ("iocport-epoll", "iocport", ["--backend", "epoll"]),
    ("c-epoll", "c", []),
    ("asyncio", "asyncio", ["--loop", "asyncio"]),
    ("uvloop", "asyncio", ["--loop", "uvloop"]),
    ("rloop", "asyncio", ["--loop", "rloop"]),
]
IDLE_TARGET = 0.5          # iocport-python / uvloop bytes per connection, at most
IDLE_WAIT = 2.0            # seconds of silence before the second reading


# ---- the plan -------------------------------------------------------------

def scenario_name(sc: Scenario) -> str:
    """A scenario's name, unique within a run: the key of its results and
    its title in the tables and the chart."""
    if sc.get("mode") == "resp":
        aof = " AOF everysec," if any(n.endswith("-aof") for n in sc["servers"]) else ""
        return f"resp,{aof} {sc['command']}, -P {sc['depth']}"
    if sc.get("mode") == "http":
        if sc.get("rate"):
            return f"http, {sc['client']} at {sc['rate']:,} req/s"
        return f"http, {sc['client']}, depth {sc['depth']}"
    size = sc["size"]
    text = f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"
    if sc.get("rate"):
        return f"{text} at {sc['rate']:,} msgs/s"
    if sc.get("mode") == "handshake":
        return f"handshakes, {text}"
    prefix = {"store": "store, ", "tls": "tls, ", "async": "async, "}.get(
        sc.get("mode", ""), "")
    return f"{prefix}{text}, depth {sc['depth']}"


def positive_ints(text: str) -> list[int]:
    """An argument type (--sizes, --rates): comma-separated positive integers."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}")
    return values


def server_names() -> list[str]:
    """Every server the scenarios know (what --only may name)."""
    return sorted({s[0] for s in SERVERS} | {s[0] for s in STORE_SERVERS} |
                  {s[0] for s in IDLE_SERVERS} | {s[0] for s in TLS_SERVERS} |
                  {s[0] for s in ASYNC_SERVERS} | {s[0] for s in HTTP_SERVERS} |
                  {s[0] for s in RESP_SERVERS})


def only_names(text: str) -> str:
    """An argument type (--only): comma-separated server names, each known."""
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = sorted(names - set(server_names()))
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown server {', '.join(unknown) or repr(text)}; "
            f"the servers are {', '.join(server_names())}")
    return ",".join(sorted(names))


def plan(args: argparse.Namespace, store_dir: str,
         certs: tuple[str | Path, str | Path] = ("cert.pem", "key.pem")) -> list[Group]:
    """The groups to run: [(title, servers, scenarios)]; `certs` (cert, key)
    for the TLS servers."""
    common = {"conns": args.conns, "framing": args.framing, "rounds": args.rounds,
              "seconds": args.seconds}
    only = set(args.only.split(",")) if args.only else None
    groups: list[Group] = []
    just = (args.latency or args.store or args.idle or getattr(args, "tls", False)
            or getattr(args, "use_async", False) or getattr(args, "http", False)
            or getattr(args, "resp", False))
    if args.full or not just:
        chosen = [s for s in SERVERS if args.full or not s[3]]
        if only:
            chosen = [s for s in SERVERS if s[0] in only]
        sizes = args.sizes or ([64, 4096, 65536] if args.full else [64])
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
                             warmup=0.5, servers=LATENCY_SERVERS) for r in args.rates]))
    if args.full or args.store:
        servers = [(name, kind, [*extra, "--store", str(Path(store_dir) / f"{name}.log")])
                   for name, kind, extra in STORE_SERVERS if only is None or name in only]
        groups.append(("store", servers, [dict(common, size=64, depth=d, mode="store")
                                          for d in (1, 16)]))
    if getattr(args, "tls", False):
        servers = [(name, kind, [*extra, *tls_server_args(kind, *certs)] if is_tls(name)
                    else extra)
                   for name, kind, extra in TLS_SERVERS if only is None or name in only]
        groups.append(("tls", servers, [dict(common, size=size, depth=d, mode="tls")
                                        for size in (args.sizes or TLS_SIZES)
                                        for d in (1, 16)]))
        hs = [s for s in servers if s[0] in HANDSHAKE_SERVERS]
        if hs:
            groups.append(("handshakes", hs, [dict(common, size=64, depth=1,
                                                   mode="handshake")]))
    if getattr(args, "use_async", False):
        servers = [s for s in ASYNC_SERVERS if only is None or s[0] in only]
        groups.append(("async", servers, [dict(common, size=size, depth=d, mode="async")
                                          for size in (args.sizes or ASYNC_SIZES)
                                          for d in (1, 16)]))
    if getattr(args, "http", False):
        servers = [s for s in HTTP_SERVERS if only is None or s[0] in only]
        http = dict(common, size=0, framing="HTTP/1.1 keep-alive, GET /", mode="http")
        groups.append(("http", servers,
                       [dict(http, client=client, depth=d) for client, d in HTTP_RUNS] +
                       [dict(http, client="h2load", depth=1, rate=HTTP_LATENCY_RATE,
                             seconds=max(2.0, args.seconds), warmup=0.5,
                             servers=HTTP_LATENCY_SERVERS)]))
    if getattr(args, "resp", False):
        servers = [(name, kind, [*extra, "--aof", str(Path(store_dir) / "kv.aof")]
                    if kind == "resp-kv" and name.endswith("-aof") else extra)
                   for name, kind, extra in RESP_SERVERS if only is None or name in only]
        resp = dict(common, size=0, mode="resp", client="redis-benchmark")
        plain = tuple(n for n, _, _ in RESP_SERVERS if not n.endswith("-aof"))
        aof = tuple(n for n, _, _ in RESP_SERVERS if n.endswith("-aof"))
        groups.append(("resp", servers,
                       [dict(resp, command=c, depth=d, servers=plain,
                             framing=f"redis-benchmark -t {c.lower()}, persistence off")
                        for c, d in RESP_RUNS] +
                       [dict(resp, command=c, depth=d, servers=aof,
                             framing=f"redis-benchmark -t {c.lower()}, AOF fsync everysec")
                        for c, d in RESP_AOF_RUNS]))
    return groups


# ---- running --------------------------------------------------------------

def run_group(servers: list[ServerSpec], scenarios: list[Scenario],
              args: argparse.Namespace, progress: Steps, tools: Tools
              ) -> tuple[Results, dict[str, str], dict[str, str], dict[str, int | None]]:
    """Start `servers` [(name, kind, extra)], warm each up, then run every
    scenario round by round, servers in turn (A B A B).  Returns (results by
    scenario name then server, notes, banners, exit statuses)."""
    loadgen, c_echo, bench_dir, server_cpu, client_cpu, env, *more = tools
    loadgen_tls = more[0] if more else None     # bench --tls: the TLS build

    def client_for(name: str) -> Path:
        """The load generator for server `name`: the TLS build for a TLS one."""
        if not is_tls(name):
            return loadgen
        assert loadgen_tls is not None, f"{name}: tools without the TLS load generator"
        return loadgen_tls

    results: Results = {scenario_name(sc): {} for sc in scenarios}
    notes = {name: note for name, kind, _ in servers
             if (note := server_missing_note(name, kind))}
    # bench --http: warmed with the first client its scenarios use
    http_warm = next((sc["client"] for sc in scenarios if sc.get("mode") == "http"), "h2load")
    started: dict[str, ServerProc] = {}
    banners: dict[str, str] = {}
    exits: dict[str, int | None] = {}
    # bench --resp: each run's -n, by (server, scenario name), from its warm-up
    resp_requests: dict[tuple[str, str], int] = {}
    try:
        for name, kind, extra in servers:
            if name in notes:
                continue
            try:
                srv = ServerProc(name, server_argv(kind, extra, args.framing, bench_dir,
                                                   c_echo), env=env, cpu=server_cpu)
            except RuntimeError as exc:
                # one line: the last the server (or its launcher) wrote
                notes[name] = f"failed to start: {str(exc).strip().splitlines()[-1][:120]}"
                progress.step(f"{name}: failed to start")
                continue
            started[name] = srv
            banners[name] = srv.banner
            # warm-up, on connections of its own
            tls = is_tls(name)
            if is_resp(kind):
                wrong = resp_check(srv.host, srv.port)
                warm = {"failed": wrong, "errors": 1} if wrong else {}
                # each scenario once: its warm-up, and its rate sets its -n
                for sc in scenarios:
                    if "failed" in warm or name not in sc["servers"]:
                        continue
                    warm = run_resp_client(srv, command=sc["command"], conns=sc["conns"],
                                           depth=sc["depth"], cpu=client_cpu,
                                           requests=sc["conns"] * sc["depth"] *
                                           RESP_WARM_REQUESTS)
                    if "failed" not in warm:
                        resp_requests[(name, scenario_name(sc))] = max(
                            sc["conns"] * sc["depth"],
                            round(warm["msgs_per_sec"] * sc["seconds"]))
            elif is_http(kind):
                wrong = http_check(srv.host, srv.port)
                warm = ({"failed": wrong, "errors": 1} if wrong else
                        run_http_client(http_warm, srv, conns=args.conns, depth=16,
                                        seconds=0.5, cpu=client_cpu))
            else:
                warm = run_loadgen(client_for(name), srv, conns=args.conns,
                                   depth=16, size=64, framing=args.framing, seconds=0.5,
                                   warmup=0, cpu=client_cpu, tls=tls)
            if "failed" in warm or warm.get("errors"):
                notes[name] = f"warm-up failed: {warm.get('failed', 'wrong replies')}"
            progress.step(f"warm-up {name}")
        for sc in scenarios:
            key = scenario_name(sc)
            for rnd in range(sc["rounds"]):
                for name, _, _ in servers:
                    live = started.get(name)
                    if live is None or name in notes or \
                            (sc.get("servers") and name not in sc["servers"]):
                        continue
                    tls = is_tls(name)
                    if sc.get("mode") in ("http", "resp"):
                        if sc["mode"] == "resp":
                            res = run_resp_client(live, command=sc["command"],
                                                  conns=sc["conns"], depth=sc["depth"],
                                                  requests=resp_requests[(name, key)],
                                                  cpu=client_cpu)
                        else:
                            res = run_http_client(sc["client"], live, conns=sc["conns"],
                                                  depth=sc["depth"], seconds=sc["seconds"],
                                                  cpu=client_cpu, rate=sc.get("rate"),
                                                  skip=sc.get("warmup", 0.5))
                        if "failed" in res:     # loudly, now, not only in the table
                            sys.stderr.write(f"iocport bench: {key} round {rnd + 1} "
                                             f"{name}: FAILED: {res['failed']}\n")
                        results[key].setdefault(name, []).append(res)
                        progress.step(f"{key} round {rnd + 1} {name}")
                        continue
                    res = run_loadgen(client_for(name), live,
                                      conns=sc["conns"], depth=sc["depth"],
                                      size=sc["size"], framing=sc["framing"],
                                      seconds=sc["seconds"], cpu=client_cpu,
                                      rate=sc.get("rate"), warmup=sc.get("warmup", 0.2),
                                      tls=tls, handshakes=sc.get("mode") == "handshake")
                    results[key].setdefault(name, []).append(res)
                    progress.step(f"{key} round {rnd + 1} {name}")
    finally:
        for name, srv in started.items():
            exits[name] = srv.stop()
    for name, _, _ in servers:
        if name not in started and name not in notes:
            notes[name] = "not run"
    return results, notes, banners, exits


def run_idle(n: int = 10000, only: set[str] | None = None, framing: str = "len4",
             wait: float = IDLE_WAIT) -> dict[str, Any]:
    """The idle scenario over IDLE_SERVERS (or the names in `only`). Returns
    {'n', 'requested_n', 'note', 'results', 'notes', 'banners', 'ratio'}."""
    bench_dir = benchmarks_dir()
    c_echo = build("c_echo_epoll.c")
    server_cpu, client_cpu = pinning()
    requested = n
    n, note = idle_fit(n)
    env = bench_env()
    chosen = [s for s in IDLE_SERVERS if only is None or s[0] in only]
    results: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    banners: dict[str, str] = {}
    for name, kind, extra in chosen:
        if rival_missing(name, kind):
            notes[name] = missing_note(rival_missing(name, kind))
            continue
        try:
            srv = ServerProc(name, server_argv(kind, extra, framing, bench_dir, c_echo),
                             env=env, cpu=server_cpu)
        except RuntimeError as exc:
            notes[name] = f"failed to start: {str(exc)[:80]}"
            continue
        banners[name] = srv.banner
        try:
            results[name] = measure_idle(srv, n, env, wait, cpu=client_cpu)
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
