"""What the benchmark prints and draws: the progress line, the machine
line, the table of each scenario's figures (medians over the rounds), the
ratio table with its targets met or not, the chart, and the idle table."""
from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from .harness import BENCH_EXTRA, Run
from .scenarios import (ASYNC_RATIOS, BOUNDS, HANDSHAKE_RATIOS, HTTP_LATENCY_RATIOS,
                        HTTP_RATIOS, IDLE_SERVERS, LATENCY_RATIOS, RATIOS, RESP_RATIOS,
                        STORE_RATIOS, TLS_PAIRS, TLS_RATIOS, Results, Scenario, is_tls,
                        scenario_name)


class Progress:
    """A bar on stderr, one step per warm-up and per run: on a terminal it
    redraws one line, elsewhere (a CI log) it prints a line a step."""

    def __init__(self, total: int) -> None:
        self.total: int = total
        self.done: int = 0
        self.tty: bool = sys.stderr.isatty()
        self.t0: float = time.monotonic()

    def step(self, what: str) -> None:
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


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def machine_line(info: dict[str, Any]) -> str:
    """harness.machine_info() in one line, printed above the tables."""
    vers = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    load = ", ".join(f"{x:.2f}" for x in info["loadavg"])
    return (f"{info['cpus']} CPUs ({info['cpu_model'] or 'unknown model'}), "
            f"Linux {info['kernel']}, Python {info['python']}; {vers}; "
            f"load average at the start: {load}")


# ---- tables ---------------------------------------------------------------

def print_tables(scenarios: list[Scenario], names: list[str], results: Results,
                 notes: dict[str, str]) -> str:
    """The table of each scenario: every server's medians over the rounds."""
    out = []
    for sc in scenarios:
        key = scenario_name(sc)
        loop = "open loop, " if sc.get("rate") else ""
        if sc.get("mode") == "handshake":
            loop = "a new TLS connection per message (msgs = handshakes), "
        unit = "msgs"
        if sc.get("mode") == "http":
            unit = "req"
            loop = (f"{sc['depth']} in flight per connection, "
                    if not sc.get("rate") else "h2load --rps, ")
        if sc.get("mode") == "resp":
            unit = "req"
            loop = f"{sc['depth']} in flight per connection, "
        out.append(f"\n## {key}, {sc['conns']} connections, {loop}{sc['framing']} "
                   f"(medians of {sc['rounds']} rounds)\n")
        out.append(f"| server | {unit}/s | p50 us | p99 us | p99.9 us | errors "
                   f"| server CPU % | of it in the kernel | {unit} per server CPU-s |")
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


def _figure(run: Run, field: str) -> float | None:
    """One run's figure; "msgs_per_sys_s" (messages per second of the
    server's kernel time) is derived from the loadgen's counts."""
    if field == "msgs_per_sys_s":
        sys_s = run.get("server_sys_s")
        return run["msgs"] / sys_s if sys_s and run.get("msgs") else None
    return run.get(field)


def _pair_ratios(results: Results, key: str, a: str, b: str | tuple[str, ...], field: str,
                 a_field: str | None = None, lowest: bool = False) -> list[float]:
    """Round-by-round ratios of `field`, A over B (B: a name or the better of
    a tuple of names, per round: the highest figure, or with `lowest` the
    lowest); A's figure is `a_field` when given."""
    ra = results[key].get(a, [])
    bs = b if isinstance(b, tuple) else (b,)
    rbs = [results[key].get(x, []) for x in bs]
    ratios: list[float] = []
    for i, run_a in enumerate(ra):
        va = _figure(run_a, a_field or field)
        vb: list[float] = [r[i][field] for r in rbs if i < len(r) and r[i].get(field)]
        if va and vb:
            ratios.append(va / (min(vb) if lowest else max(vb)))
    return ratios


def ratio_table(scenarios: list[Scenario], results: Results, banners: dict[str, str]
                ) -> tuple[str, list[dict[str, Any]]]:
    """The ratios of every scenario run: throughput targets (RATIOS) on the
    closed-loop scenarios, p99 latency (LATENCY_RATIOS) on the open-loop
    ones, TLS_RATIOS and ASYNC_RATIOS on the TLS and coroutine-handler
    ones, HTTP_RATIOS and HTTP_LATENCY_RATIOS on the HTTP ones, RESP_RATIOS
    on the RESP ones, and the store scenario's figures (STORE_RATIOS, no
    target)."""
    out = ["\n## Ratios (median of the round-by-round ratios)\n",
           "| ratio | scenario | per server CPU-s | msgs/s | p99 | rounds' range | target | met |",
           "|---|---|---:|---:|---:|---:|---|---|"]
    rows: list[dict[str, Any]] = []

    def row(label: str, a: str, b: str | tuple[str, ...], sc: Scenario,
            target: float | None = None, field: str = "msgs_per_cpu_s", most: bool = False,
            bound: bool = False) -> None:
        key = scenario_name(sc)
        # a bound row has a figure per CPU-second only
        # a latency target (most) is against the B with the lowest p99
        each = {f: _pair_ratios(results, key, a, b, f,
                                "msgs_per_sys_s" if bound else None,
                                lowest=most and f == "p99_us")
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

    b: str | tuple[str, ...]   # (a rival, or the best of several)
    for sc in scenarios:
        mode = "rate" if sc.get("rate") else sc.get("mode", "closed")
        if mode == "resp":
            for label, a, b, depth, each_target, command in RESP_RATIOS:
                if a in sc["servers"] and b in sc["servers"] and depth in (None, sc["depth"]):
                    goal = each_target if command in (None, sc["command"]) else None
                    row(label, a, b, sc, goal)
                    if label in BOUNDS and goal is not None:
                        row(BOUNDS[label], a, b, sc, goal, bound=True)
        elif sc.get("mode") == "http":
            if sc.get("rate"):
                for label, a, b, target in HTTP_LATENCY_RATIOS:
                    row(label, a, b, sc, target, field="p99_us", most=True)
                continue
            for label, a, b, depth, each_target, client in HTTP_RATIOS:
                if depth is None or sc["depth"] == depth:
                    goal = each_target if client in (None, sc["client"]) else None
                    row(label, a, b, sc, goal)
                    if label in BOUNDS and goal is not None:
                        row(BOUNDS[label], a, b, sc, goal, bound=True)
        elif mode == "closed":
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
        elif mode in ("tls", "async"):
            for label, a, b, depth, each_target, size in (TLS_RATIOS if mode == "tls"
                                                          else ASYNC_RATIOS):
                if depth is None or sc["depth"] == depth:
                    goal = each_target if size in (None, sc["size"]) else None
                    row(label, a, b, sc, goal)
                    if label in BOUNDS and goal is not None:
                        row(BOUNDS[label], a, b, sc, goal, bound=True)
        elif mode == "handshake":
            for label, a, b in HANDSHAKE_RATIOS:
                row(label, a, b, sc)
        else:
            for label, a, b in STORE_RATIOS:
                row(label, a, b, sc)
    return "\n".join(out), rows


# ---- HTTP and RESP ----------------------------------------------------------

# How bench --http and --resp count a server's CPU (harness.tree_cpu)
TREE_CPU = ("server CPU = utime+stime (+ reaped children's) of the server's process and "
            "every descendant, /proc/PID/stat, read before and after each client run")

def http_lines(tools: dict[str, str | None]) -> str:
    """What `bench --http` measured and with what: the load generators'
    and nginx's versions (`tools`: name -> version line, None when not
    installed), how the server's CPU is counted, how latency is taken."""
    have = "; ".join(f"{n}: {v or 'not installed'}" for n, v in tools.items())
    return "\n".join([
        f"HTTP: {have}",
        "HTTP: GET / on keep-alive connections, every server answering 200 text/plain "
        "'hello, world' (checked before its warm-up); h2load --h1 -t 1 -m 1 and -m 16, "
        "wrk -t 1 (no pipelining); any error or non-2xx answer fails the run",
        f"HTTP: {TREE_CPU}",
        "HTTP latency: h2load --rps at a fixed offered load, 1 request in flight per "
        "connection, p50/p99 from its per-request log (first 0.5 s left out); latency "
        "counts from each request's send, not a schedule (no wrk2 here): read it below "
        "saturation only. wrk's p50/p99 in its tables are closed-loop, at saturation"])


def resp_lines(tools: dict[str, str | None]) -> str:
    """What `bench --resp` measured and with what (`tools`: redis-benchmark's
    and redis-server's version lines, None when not installed), and what of
    issue 18's targets it does not measure."""
    have = "; ".join(f"{n}: {v or 'not installed'}" for n, v in tools.items())
    return "\n".join([
        f"RESP: {have}",
        "RESP: redis-benchmark -c 50 -P 1 and -P 16, -t set and -t get (its defaults: one "
        "key, 3-byte values), --csv -e; each run's -n from the server's rate in its warm-up "
        "run, to last about --seconds; the CSV row comes once all -n are answered; an exit "
        "status other than 0, no row, or any other line (an error reply, a lost "
        "connection, a warning) fails the run",
        "RESP: kv.py = examples/kv.py (auto backend, one worker); redis-server --save \"\" "
        "--appendonly no; the AOF pair: kv.py --aof FILE --fsync everysec, redis-server "
        "--appendonly yes --appendfsync everysec, files in temporary directories",
        f"RESP: {TREE_CPU}",
        "RESP: not measured here yet: issue 18's iocport client (RESP(client=True)) "
        "against redis-py with hiredis"])


# ---- TLS ------------------------------------------------------------------

def tls_cost_table(scenarios: list[Scenario], results: Results) -> str:
    """The cost of TLS for each server: its messages per server CPU-second
    over TLS and in plaintext (medians), and the ratio of the two taken
    round by round (median, the rounds' range)."""
    out = ["\n## The cost of TLS: TLS over plaintext, messages per server CPU-second "
           "(median of the round-by-round ratios)\n",
           "| server | scenario | plaintext per CPU-s | TLS per CPU-s | TLS / plaintext "
           "| rounds' range |",
           "|---|---|---:|---:|---:|---:|"]
    for sc in scenarios:
        if sc.get("mode") != "tls":
            continue
        key = scenario_name(sc)
        for tls, plain in TLS_PAIRS:
            ratios = _pair_ratios(results, key, tls, plain, "msgs_per_cpu_s")
            figs = [_median([r.get("msgs_per_cpu_s") for r in results[key].get(n, [])
                             if "failed" not in r]) for n in (plain, tls)]
            if figs == [None, None]:
                continue
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"
            out.append(f"| {plain} | {key} | {_fmt(figs[0], ',.0f')} | {_fmt(figs[1], ',.0f')} "
                       f"| {_fmt(_median(ratios), '.2f')} | {spread} |")
    return "\n".join(out)


def tls_negotiated(results: Results) -> str:
    """One line: the TLS version and cipher the load generator negotiated
    with each TLS server (all the runs must agree)."""
    seen: dict[str, set[str]] = {}
    for per in results.values():
        for name, runs in per.items():
            if is_tls(name):
                for r in runs:
                    if r.get("tls_cipher"):
                        seen.setdefault(name, set()).add(f"{r['tls_version']} "
                                                         f"{r['tls_cipher']}")
    if not seen:
        return "negotiated: -"
    return "negotiated: " + "; ".join(f"{n} {', '.join(sorted(v))}"
                                      for n, v in sorted(seen.items()))


# ---- chart ----------------------------------------------------------------

def chart_line(path: str, scenarios: list[Scenario], names: list[str],
               results: Results) -> str:
    """Draw the chart; the line that says where it is, or why it is not."""
    if write_chart(path, scenarios, names, results):
        return f"chart: {path}"
    return (f"chart: skipped, matplotlib is not installed (pip install matplotlib, "
            f"or {BENCH_EXTRA})")


def write_chart(path: str, scenarios: list[Scenario], names: list[str],
                results: Results) -> bool:
    """The chart at `path`; False when matplotlib is not installed."""
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


# ---- idle connections -----------------------------------------------------

def idle_table(idle: dict[str, Any]) -> str:
    """The idle scenario's table (scenarios.run_idle()'s result)."""
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
