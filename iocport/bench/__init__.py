"""``python -m iocport bench``: iocport against its rivals, same harness, same run.

The load comes from ``benchmarks/loadgen.c`` (a native closed-loop client
that checks every reply byte for byte), built with gcc into a cache
directory together with ``benchmarks/c_echo_epoll.c`` (the plain C
baseline); ``--tls`` builds a second load generator with OpenSSL and
``benchmarks/c_echo_tls.c`` (the C baseline over TLS), so that the plain
benchmark needs no OpenSSL; ``--http`` drives HTTP servers with h2load and
wrk (Debian's packages) instead, against benchmarks/http_rivals.py's
servers, and counts the CPU time of each server's whole process tree
(granian and nginx work in child processes); ``--resp`` drives
examples/kv.py and Debian's redis-server with redis-benchmark, counted the
same way.  Each server runs pinned to one CPU, the client
to another; each server is warmed on separate connections before it is
measured; servers are measured in turn (A B A B ...) for several rounds and
every ratio is computed round by round, the median reported.  The headline figure is
messages per server CPU-second (the server's utime+stime from /proc over the
measured window), which judges a server by its cost per message even when
the client is the bottleneck.

The package is cut by concern, so that each change has one file to go to:

- ``harness``: the machinery, which knows no plan: building the C tools,
  starting, pinning and stopping servers, one loadgen run, one idle-memory
  reading, what the machine is.  How to start a new kind of server, or a
  new client, goes here.
- ``scenarios``: what runs and how it is judged: each scenario's servers,
  ratios and targets, the plan the options make of them, and the A B A B
  rounds that run it.  A new scenario or a moved target goes here.
- ``report``: what is printed and drawn: the progress bar, the machine
  line, medians, the tables, the ratio table, the chart.  A new column
  goes here.
- this module: the command (its options, and ``run`` putting the three
  together).

The imports go one way (harness, scenarios, report, this module: each
imports only from those before it), so that the harness can be read and
tested without the plan, and the plan without its presentation.
``python -m iocport`` imports this package only when the command is
``bench``: ``echo`` and ``demo`` have no use for any of it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from .._cli import int_in, output_path, positive_float, resolve_backend
from .harness import (HTTP_RIVAL_PACKAGES, HTTP_TOOLS, RESP_TOOLS, RIVAL_PACKAGES,
                      TLS_DEV_HINT,
                      bench_env, benchmarks_dir, build, build_tls, find_tool, machine_info,
                      make_certs, missing_line, pinning, rival_missing, tls_dev_installed,
                      tool_hint, tool_version)
from .report import (Progress, chart_line, http_lines, idle_table, machine_line, print_tables,
                     ratio_table, resp_lines, tls_cost_table, tls_negotiated)
from .scenarios import (IDLE_SERVERS, LATENCY_RATES, Group, ServerSpec, Tools, only_names,
                        plan, positive_ints, run_group, run_idle)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options; ``python -m iocport`` adds them only when the
    command is ``bench``."""
    p.add_argument("--full", action="store_true",
                   help="add 4 KiB and 64 KiB payloads and every server variant")
    p.add_argument("--sizes", type=positive_ints, default=None, metavar="BYTES,...",
                   help="payload sizes of the throughput runs (default 64; "
                        "with --full 64,4096,65536)")
    p.add_argument("--seconds", type=positive_float, default=1.5,
                   help="measured seconds per run (default 1.5)")
    p.add_argument("--rounds", type=int_in(1), default=3, help="A B A B rounds (default 3)")
    p.add_argument("--conns", type=int_in(1), default=50, help="connections (default 50)")
    p.add_argument("--framing", choices=("len4", "line"), default="len4")
    p.add_argument("--only", type=only_names, default=None, metavar="NAME,...",
                   help="comma-separated server names to run (default: all of the suite)")
    p.add_argument("--json", type=output_path, metavar="PATH",
                   help="write every run's figures here")
    p.add_argument("--chart", type=output_path, metavar="PNG", default="iocport-bench.png",
                   help="chart path when matplotlib is installed (default iocport-bench.png)")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--install-rivals", action="store_true",
                   help="pip install uvloop and rloop first (with --http, granian, uvicorn, "
                        "httptools and socketify too)")
    p.add_argument("--idle", action="store_true",
                   help="run only the idle-connections memory scenario "
                        "(also part of --full)")
    p.add_argument("--idle-conns", type=int_in(1), default=10000,
                   help="connections for the idle scenario (default 10000)")
    p.add_argument("--latency", action="store_true",
                   help="run only the latency-at-fixed-load scenario (also part of --full)")
    p.add_argument("--rates", type=positive_ints, default=LATENCY_RATES,
                   metavar="RATE,...",
                   help="offered loads of the latency scenario, messages per second "
                        f"in all (default {LATENCY_RATES})")
    p.add_argument("--store", action="store_true",
                   help="run only the store-to-disk scenario (also part of --full)")
    p.add_argument("--tls", action="store_true",
                   help="run only the TLS scenarios: TLS echo against the same servers in "
                        "plaintext, 64 B and 4 KiB, and handshakes (needs OpenSSL's "
                        "headers: apt-get install libssl-dev; not part of --full)")
    p.add_argument("--async", dest="use_async", action="store_true",
                   help="run only the coroutine-handler scenario: echo --async against "
                        "uvloop's Protocol and streams servers, depths 1 and 16, with the "
                        "plain handler beside them (needs uvloop; not part of --full)")
    p.add_argument("--http", action="store_true",
                   help="run only the HTTP/1.1 scenarios: python -m iocport http (Python "
                        "handler, --native) against granian (RSGI, ASGI), uvicorn, socketify "
                        "and nginx, requests per server CPU-second under h2load --h1 (1 and "
                        "16 in flight) and wrk, and p99 at a fixed load (needs h2load, wrk, "
                        "nginx: apt-get install nghttp2-client wrk nginx; not part of --full)")
    p.add_argument("--resp", action="store_true",
                   help="run only the RESP scenarios: examples/kv.py (from a source tree) "
                        "against redis-server, persistence off and with an append-only file "
                        "synced every second, requests per server CPU-second under "
                        "redis-benchmark (GET and SET, -P 1 and -P 16; needs "
                        "apt-get install redis-tools redis-server; not part of --full)")


def install_tls_dev() -> None:
    """--install-rivals with --tls: OpenSSL's headers through apt-get when
    they are missing and this runs as root; otherwise say how."""
    if tls_dev_installed():
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "libssl-dev"], check=False)
    else:
        sys.stderr.write(f"iocport bench: {TLS_DEV_HINT}\n")


def install_tools(tools: dict[str, str]) -> None:
    """--install-rivals with --http or --resp: the programs of `tools`
    (HTTP_TOOLS, RESP_TOOLS) through apt-get when one is missing and this
    runs as root; otherwise say how."""
    missing = [tools[t] for t in tools if find_tool(t) is None]
    if not missing:
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=False)
    else:
        sys.stderr.write(f"iocport bench: apt-get install {' '.join(missing)}\n")


def http_clients_present(groups: list[Group]) -> list[str]:
    """Drop the HTTP and RESP scenarios whose load generator is not
    installed (and a group left with none); one line each on what was left
    out."""
    lines: list[str] = []
    for i, (title, servers, scs) in enumerate(groups):
        gone = {sc["client"] for sc in scs if sc.get("mode") in ("http", "resp")
                and find_tool(sc["client"]) is None}
        if gone:
            groups[i] = (title, servers, [sc for sc in scs if sc.get("client") not in gone])
            lines += [f"{c} not found, so its scenarios were not run: {tool_hint(c)}"
                      for c in sorted(gone)]
    groups[:] = [g for g in groups if g[2]]
    return lines


def missing_rivals(servers: list[ServerSpec]) -> set[str]:
    """The packages of the rivals among `servers` [(name, kind, ...)] that
    are not installed."""
    return {pkg for name, kind, *_ in servers if (pkg := rival_missing(name, kind))}


def run_idle_only(args: argparse.Namespace) -> int:
    """``--idle`` alone: the idle scenario has no loadgen and no groups."""
    idle = run_idle(args.idle_conns, only=set(args.only.split(",")) if args.only else None,
                    framing="len4")
    print("# iocport bench --idle")
    print(f"\n{machine_line(machine_info())}")
    print(idle_table(idle))
    missing = missing_rivals(IDLE_SERVERS)
    if missing:
        print(f"\n{missing_line(missing)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"idle": idle}, f, indent=1)
    failed = [n for n, r in idle["results"].items() if "failed" in r]
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    """The command: the plan's groups in turn, then the idle scenario when
    asked; tables on stdout, progress on stderr.  Exit status 1 when any run
    failed or counted an error (a wrong reply, a lost connection)."""
    # $IOCPORT_BACKEND reaches the iocport servers started here: a bad one
    # is said now, not as a server that failed to start.
    resolve_backend(None)
    if args.install_rivals:
        packages = [*RIVAL_PACKAGES.values(),
                    *(HTTP_RIVAL_PACKAGES.values() if args.http else ())]
        subprocess.run([sys.executable, "-m", "pip", "install", *packages], check=False)
        if args.tls:
            install_tls_dev()
        if args.http:
            install_tools(HTTP_TOOLS)
        if args.resp:
            install_tools(RESP_TOOLS)
    info = machine_info()
    if info["loadavg"][0] > 0.5:
        sys.stderr.write(f"iocport bench: load average {info['loadavg'][0]:.2f}: another "
                         "job is running; its CPU use will show in the figures\n")
    server_cpu, client_cpu = pinning()
    plain = (build("loadgen.c"), build("c_echo_epoll.c"), benchmarks_dir(),
             server_cpu, client_cpu, bench_env())
    tools: Tools = plain
    if args.tls:
        # before anything runs: a missing libssl-dev is said now
        tools = (*plain, build_tls("loadgen"))
        build_tls("c_echo")
    with tempfile.TemporaryDirectory(prefix="iocport-bench-store-") as store_dir:
        certs = make_certs(store_dir) if args.tls else ("", "", None)
        groups = plan(args, store_dir, certs[:2])
        left_out = http_clients_present(groups) if args.http or args.resp else []
        for line in left_out:
            sys.stderr.write(f"iocport bench: {line}\n")
        for asked, title, clients in ((args.http, "http", "h2load or wrk"),
                                      (args.resp, "resp", "redis-benchmark")):
            if asked and not any(t == title for t, *_ in groups):
                sys.stderr.write(f"iocport bench: --{title}: no load generator to run "
                                 f"({clients})\n")
                return 1
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
    if args.http:
        print(http_lines({t: tool_version(t) for t in HTTP_TOOLS}))
    if args.resp:
        print(resp_lines({t: tool_version(t) for t in RESP_TOOLS}))
    for line in left_out:
        print(line)
    if args.tls:
        print(f"TLS 1.3, the load generator offering TLS_AES_128_GCM_SHA256 alone, "
              f"no verification; certificate ECDSA P-256 from {certs[2]}")
    all_results, all_rows, all_notes, all_banners, bad_exit = {}, [], {}, {}, {}
    for title, servers, scenarios, results, notes, banners, exits in ran:
        names = [s[0] for s in servers]
        for name in names:
            if name in banners:
                print(f"- {name}: {banners[name]}")
        print(print_tables(scenarios, names, results, notes))
        text, rows = ratio_table(scenarios, results, banners)
        print(text)
        if title == "tls":
            print(tls_cost_table(scenarios, results))
        if title in ("tls", "handshakes"):
            print(f"\n{tls_negotiated(results)}")
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
    missing = missing_rivals([s for _, servers, *_ in ran for s in servers] +
                             (IDLE_SERVERS if idle else []))
    if missing:
        print(f"\n{missing_line(missing)}")
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
            if title == "throughput":
                print("\n" + chart_line(args.chart, scenarios, [s[0] for s in servers],
                                        results))
    total_errors = sum(r.get("errors", 0) for per in all_results.values()
                       for runs in per.values() for r in runs)
    if idle and any("failed" in r for r in idle["results"].values()):
        total_errors += 1
    return 1 if total_errors else 0
