"""Smoke test of the benchmark harness: the native load generator builds, runs
against the iocport echo server and the C echo server with no errors, and
catches a server whose replies are wrong.  No timing assertions."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading

import pytest

import iocport
from iocport import _cli, bench
from iocport.bench import harness, report, scenarios

from conftest import TREE, child_env, needs_tree

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which(os.environ.get("CC") or "gcc") is None,
                       reason="gcc is needed to build the load generator"),
]

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-bin")
    return {"loadgen": harness.build("loadgen.c", out),
            "c_echo": harness.build("c_echo_epoll.c", out)}


def _loadgen(built, host, port, *, framing="len4", pid=None, depth=4, seconds=1.0):
    argv = [str(built["loadgen"]), "--host", host, "--port", str(port),
            "--conns", "8", "--depth", str(depth), "--size", "100",
            "--framing", framing, "--seconds", str(seconds),
            "--warmup-seconds", "0.1"]
    if pid:
        argv += ["--server-pid", str(pid)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


@pytest.mark.parametrize("framing", ["len4", "line"])
@pytest.mark.parametrize("server", ["iocport", "iocport-native", "c"])
def test_loadgen_against_echo_servers(built, server, framing, in_child_cwd):
    if server == "c":
        argv = [str(built["c_echo"]), "--port", "0", "--framing", framing]
    else:
        argv = [sys.executable, "-m", "iocport", "echo", "--port", "0",
                "--framing", framing] + (["--native"] if server == "iocport-native" else [])
    srv = harness.ServerProc(server, argv, env=child_env())
    try:
        rc, res, err = _loadgen(built, srv.host, srv.port, framing=framing, pid=srv.pid)
    finally:
        status = srv.stop()
    assert rc == 0, err
    assert res["errors"] == 0
    assert res["msgs"] > 0
    assert res["server_cpu_s"] is not None and res["server_cpu_s"] >= 0
    for key in ("seconds", "msgs_per_sec", "p50_us", "p99_us", "p999_us"):
        assert key in res
    assert status == 0


class _BrokenEcho:
    """A len4 echo server that flips one byte of every reply payload."""

    def __init__(self):
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.socks = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            self.socks.append(s)
            t = threading.Thread(target=self._serve, args=(s,), daemon=True)
            self.threads.append(t)
            t.start()

    @staticmethod
    def _serve(s):
        buf = b""
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    return
                buf += data
                out = []
                while len(buf) >= 4:
                    n = int.from_bytes(buf[:4], "big")
                    if len(buf) < 4 + n:
                        break
                    payload = bytearray(buf[4:4 + n])
                    if payload:
                        payload[-1] ^= 0x01
                    out.append(buf[:4] + bytes(payload))
                    buf = buf[4 + n:]
                s.sendall(b"".join(out))
        except OSError:
            return

    def close(self):
        # shutdown() wakes the threads blocked in accept() and recv() (close()
        # would not, and closing a descriptor another thread is using races);
        # close each socket once its threads are gone.
        _shutdown(self.lsock)
        self.threads[0].join(5)
        for s in self.socks:
            _shutdown(s)
        for t in self.threads:
            t.join(5)
        self.lsock.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


def _shutdown(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass   # the peer went first


def test_loadgen_detects_wrong_replies(built):
    srv = _BrokenEcho()
    try:
        rc, res, err = _loadgen(built, "127.0.0.1", srv.port, depth=2, seconds=0.5)
    finally:
        srv.close()
    assert res["errors"] > 0
    assert rc != 0
    assert "wrong reply" in err


def test_loadgen_detects_a_lost_connection(built):
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def accept_and_close():
        for _ in range(8):
            try:
                s, _ = lsock.accept()
            except OSError:
                return
            s.close()

    t = threading.Thread(target=accept_and_close, daemon=True)
    t.start()
    try:
        rc, res, _ = _loadgen(built, "127.0.0.1", port, seconds=0.5)
    finally:
        _shutdown(lsock)   # wakes accept() if fewer than 8 connections came
        t.join(5)
        lsock.close()
    assert res["errors"] > 0 and rc != 0


def test_idle_scenario_smoke(in_child_cwd):
    """The idle-connections scenario runs for iocport with N=200 and gives a
    positive figure. No threshold: sizes are not pass/fail."""
    idle = scenarios.run_idle(200, only={"iocport-python"})
    assert idle["n"] == 200
    r = idle["results"]["iocport-python"]
    assert "failed" not in r, r
    assert r["conns"] == 200
    assert r["rss_before"] > 0 and r["rss_after"] > 0
    assert isinstance(r["bytes_per_conn"], float) and r["bytes_per_conn"] > 0
    assert r.get("exit", 0) == 0
    json.loads(json.dumps(idle))          # fits the JSON output
    assert "iocport-python" in report.idle_table(idle)


class _SilentServer:
    """Accepts connections and reads everything, never replies."""

    def __init__(self):
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.socks = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import selectors
        with selectors.DefaultSelector() as sel:
            sel.register(self.lsock, selectors.EVENT_READ)
            while not self.stopping.is_set():
                for key, _ in sel.select(0.1):
                    try:
                        if key.fileobj is self.lsock:
                            s, _ = self.lsock.accept()
                            self.socks.append(s)
                            sel.register(s, selectors.EVENT_READ)
                        elif not key.fileobj.recv(65536):
                            sel.unregister(key.fileobj)
                    except OSError:
                        return

    def close(self):
        # The loop stops at the flag (closing the listening socket would not
        # wake an epoll selector); the sockets are closed after it is gone.
        self.stopping.set()
        self.thread.join(5)
        self.lsock.close()
        for s in self.socks:
            s.close()


def test_open_loop_keeps_sending_without_replies(built):
    """--rate is an open loop: messages go out on schedule whether or not
    replies come (a closed loop would stop at conns x depth)."""
    srv = _SilentServer()
    try:
        argv = [str(built["loadgen"]), "--port", str(srv.port), "--conns", "4",
                "--size", "16", "--rate", "2000", "--seconds", "0.5"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    finally:
        srv.close()
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["errors"] == 0, r.stderr
    assert res["msgs"] == 0
    assert res["rate"] == 2000
    assert res["unanswered"] > 4 and res["max_inflight"] > 1


def test_open_loop_against_iocport(built, backend, in_child_cwd):
    argv = [sys.executable, "-m", "iocport", "echo", "--port", "0", "--backend", backend]
    srv = harness.ServerProc("iocport", argv, env=child_env())
    try:
        res = harness.run_loadgen(built["loadgen"], srv, conns=8, depth=1, size=64,
                                  framing="len4", seconds=0.5, warmup=0.1, rate=4000)
    finally:
        status = srv.stop()
    assert res["errors"] == 0, res
    assert res["msgs"] > 0 and res["rate"] == 4000
    assert status == 0


@pytest.mark.parametrize("server", ["iocport-epoll", "iocport-uring", "asyncio"])
def test_store_servers_write_before_replying(built, server, tmp_path, in_child_cwd):
    """The store scenario's servers: every answered message is in the file
    before its reply, framed as on the wire (len4): the file reads back as
    whole 100-byte messages, at least one per reply."""
    path = tmp_path / "store.log"
    if server == "asyncio":
        argv = [sys.executable, str(harness.benchmarks_dir() / "rivals.py"), "asyncio",
                "--port", "0", "--store", str(path)]
    else:
        argv = [sys.executable, "-m", "iocport", "echo", "--port", "0", "--store",
                str(path), "--backend", server.split("-")[1]]
    srv = harness.ServerProc(server, argv, env=child_env())
    try:
        rc, res, err = _loadgen(built, srv.host, srv.port, pid=srv.pid, seconds=0.5)
    finally:
        status = srv.stop()
    assert rc == 0 and res["errors"] == 0, err
    framer = iocport.Framer(iocport.LengthPrefixed(4))
    stored = framer.feed(path.read_bytes())
    assert framer.pending == 0, "a partial record at the end"
    assert {len(m) for m in stored} == {100}
    assert len(stored) >= res["msgs"] > 0
    assert status == 0


def test_plan_covers_every_scenario(tmp_path):
    """--full plans throughput (3 sizes x 2 depths), latency (one per rate)
    and store; the quick default plans only the 64 B throughput pair."""
    import argparse
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    groups = scenarios.plan(p.parse_args(["--full", "--rates", "100,200"]), tmp_path)
    assert [g[0] for g in groups] == ["throughput", "latency", "store"]
    assert len(groups[0][2]) == 6
    assert [sc["rate"] for sc in groups[1][2]] == [100, 200]
    assert all("--store" in extra for _, _, extra in groups[2][1])
    names = {scenarios.scenario_name(sc) for _, _, scs in groups for sc in scs}
    assert len(names) == 6 + 2 + 2          # result keys do not collide
    quick = scenarios.plan(p.parse_args([]), tmp_path)
    assert [g[0] for g in quick] == ["throughput"] and len(quick[0][2]) == 2
    some = scenarios.plan(p.parse_args(["--latency", "--store"]), tmp_path)
    assert [g[0] for g in some] == ["latency", "store"]
    assert scenarios.plan(p.parse_args(["--idle"]), tmp_path) == []   # idle alone
    sized = scenarios.plan(p.parse_args(["--sizes", "4096,65536"]), tmp_path)
    assert sorted({sc["size"] for sc in sized[0][2]}) == [4096, 65536]



@pytest.mark.parametrize("argv", [["--sizes", "64,x"], ["--rates", "0"], ["--seconds", "0"],
                                  ["--rounds", "0"], ["--conns", "-1"],
                                  ["--only", "iocport-python,apache"],
                                  ["--json", "/nonexistent-dir/figures.json"]])
def test_bad_options_are_usage_errors(argv, capsys):
    """Found when the options are parsed (exit status 2, one line naming
    the option), not minutes later by the run."""
    p = _cli.Parser(prog="bench")
    bench.add_arguments(p)
    with pytest.raises(SystemExit) as exc:
        p.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and argv[0] in err, err


def test_missing_rivals_say_how_to_install_them(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("uvloop", "rloop") else real(name, *a))
    assert harness.rival_missing("uvloop", "asyncio") == "uvloop"
    assert harness.rival_missing("rloop-store", "asyncio") == "rloop"
    assert harness.rival_missing("asyncio", "asyncio") is None
    # iocport's coroutine handler served from uvloop's loop needs it too;
    # the plain handler and the C server need nothing
    assert harness.rival_missing("iocport-async-uvloop", "iocport") == "uvloop"
    assert harness.rival_missing("iocport-async", "iocport") is None
    assert harness.rival_missing("c-epoll", "c") is None
    assert "pip install uvloop" in harness.missing_note("uvloop")
    servers = [("uvloop", "asyncio", []), ("asyncio", "asyncio", []), ("c-epoll", "c", [])]
    assert bench.missing_rivals(servers) == {"uvloop"}
    line = harness.missing_line({"uvloop", "rloop"})
    assert "pip install rloop uvloop" in line and "iocport[bench]" in line


def test_missing_matplotlib_says_the_chart_was_skipped(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import fails
    sc = dict(size=64, depth=1, conns=1, framing="len4", mode="closed", rounds=1)
    line = report.chart_line(str(tmp_path / "c.png"), [sc], ["iocport-python"],
                             {scenarios.scenario_name(sc): {}})
    assert line.startswith("chart: skipped") and "pip install matplotlib" in line
    assert not (tmp_path / "c.png").exists()


@needs_tree("pyproject.toml", "README.md")
def test_bench_extra_holds_what_the_docs_install():
    """pyproject's `bench` extra is what the README tells users to install
    for the benchmark, and every rival --install-rivals installs."""
    tomllib = pytest.importorskip("tomllib")
    pyproject, readme = TREE / "pyproject.toml", TREE / "README.md"
    extra = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["bench"]
    told = re.search(r"pip install ((?:[a-z]+ ?)+)", readme.read_text().split("## Benchmarks")[1])
    assert set(told.group(1).split()) == set(extra)
    assert set(harness.RIVAL_PACKAGES.values()) | set(harness.HTTP_RIVAL_PACKAGES.values()) \
        | {"matplotlib"} == set(extra)


def test_ratio_table_pairs_rounds_and_sets_targets_for_64_bytes():
    """Ratios are taken round by round (A over the better of B's servers in
    that round), their median reported with the rounds' range; the targets
    apply to 64-byte rows only, except epoll/io_uring parity."""
    def runs(*per_cpu, kernel=1.0):
        # one CPU-second each, `kernel` of it in the kernel
        return [{"msgs_per_cpu_s": v, "msgs_per_sec": v, "p99_us": 100.0, "msgs": v,
                 "server_cpu_s": 1.0, "server_sys_s": kernel} for v in per_cpu]

    scs = [dict(size=size, depth=1, conns=50, framing="len4", mode="closed")
           for size in (64, 4096)]
    results = {}
    for sc in scs:
        results[scenarios.scenario_name(sc)] = {
            "iocport-python": runs(300, 150, 200, kernel=0.75),
            "uvloop": runs(100, 100, 200),      # best of uvloop and rloop,
            "rloop": runs(200, 50, 100),        # round by round: 200, 100, 200
            "iocport-epoll": runs(270, 150, 100),
        }
    banners = {"iocport-python": "listening on 127.0.0.1:1 (backend uring, python echo)"}
    text, rows = report.ratio_table(scs, results, banners)
    best = {r["scenario"]: r for r in rows if r["ratio"].startswith("python handler / best")}
    assert best["64 B, depth 1"]["rounds"] == [1.5, 1.5, 1.0]
    assert best["64 B, depth 1"]["per_cpu"] == 1.5
    assert best["64 B, depth 1"]["target"] == 1.5
    assert best["4 KiB, depth 1"]["target"] is None
    # the bound: the python handler's messages per second of kernel time
    # (400, 200, 266.7) over the best rival's per CPU-second (200, 100, 200)
    bound = {r["scenario"]: r for r in rows if r["ratio"].startswith("bound")
             and r["ratio"].endswith("best of uvloop,rloop")}
    assert list(bound) == ["64 B, depth 1"]             # only where a target is set
    assert bound["64 B, depth 1"]["per_cpu"] == pytest.approx(2.0)
    assert bound["64 B, depth 1"]["rounds"] == pytest.approx([2.0, 2.0, 4 / 3])
    line = next(ln for ln in text.splitlines() if ln.startswith("| bound")
                and "best of" in ln)
    assert "| 2.00 | - | - | 1.33-2.00 | >= 1.5 | in reach |" in line
    parity = {r["scenario"]: r for r in rows if r["ratio"].startswith("epoll backend")}
    assert parity["4 KiB, depth 1"]["target"] == 0.8
    assert parity["4 KiB, depth 1"]["per_cpu"] == 0.9     # 0.9, 1.0, 0.5
    line = next(ln for ln in text.splitlines()
                if ln.startswith("| python handler / best") and "64 B" in ln)
    assert "| 1.00-1.50 | >= 1.5 | yes |" in line
    # without an io_uring run to compare with, there is no parity row
    _, rows = report.ratio_table(scs, results, {})
    assert not [r for r in rows if r["ratio"].startswith("epoll backend")]


def test_machine_info_describes_the_host():
    info = harness.machine_info()
    assert info["cpus"] == os.cpu_count()
    assert info["kernel"] == os.uname().release
    assert info["python"].startswith("%d.%d." % sys.version_info[:2])
    assert len(info["loadavg"]) == 3
    json.loads(json.dumps(info))                 # goes into --json as is
    assert info["kernel"] in report.machine_line(info)


# ---- bench --tls ------------------------------------------------------------

@pytest.fixture(scope="module")
def built_tls(tmp_path_factory):
    """The TLS build of the load generator and the C TLS echo server; the
    tests that need them skip where OpenSSL's headers are missing."""
    out = tmp_path_factory.mktemp("bench-tls-bin")
    try:
        return {"loadgen": harness.build_tls("loadgen", out),
                "c_echo": harness.build_tls("c_echo", out)}
    except _cli.Failure as exc:
        if "libssl-dev" in str(exc):
            pytest.skip("OpenSSL's headers are missing (apt-get install libssl-dev)")
        raise


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return harness.make_certs(tmp_path_factory.mktemp("bench-certs"))


def _tls_loadgen(built_tls, srv, *extra):
    argv = [str(built_tls["loadgen"]), "--host", srv.host, "--port", str(srv.port),
            "--conns", "8", "--size", "100", "--seconds", "0.5", "--warmup-seconds", "0.1",
            "--server-pid", str(srv.pid), "--tls", *extra]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


@pytest.mark.parametrize("server", ["iocport", "iocport-native", "c-tls", "asyncio"])
@pytest.mark.parametrize("mode", [["--depth", "4"], ["--handshakes"]])
def test_tls_loadgen_against_tls_servers(built_tls, certs, server, mode, in_child_cwd):
    """Every TLS server of the scenario answers the TLS load generator with no
    error, in both modes, and negotiates TLS 1.3 with AES-128-GCM (the only
    suite the load generator offers)."""
    cert, key, _ = certs
    if server == "c-tls":
        argv = [str(built_tls["c_echo"]), "--port", "0", "--cert", str(cert), "--key", str(key)]
    elif server == "asyncio":
        argv = [sys.executable, str(harness.benchmarks_dir() / "rivals.py"), "asyncio",
                "--port", "0", "--tls-cert", str(cert), "--tls-key", str(key)]
    else:
        argv = [sys.executable, "-m", "iocport", "echo", "--port", "0", "--tls-cert",
                str(cert), "--tls-key", str(key)] + (["--native"] if "native" in server else [])
    srv = harness.ServerProc(server, argv, env=child_env())
    try:
        rc, res, err = _tls_loadgen(built_tls, srv, *mode)
    finally:
        status = srv.stop()
    assert rc == 0 and res["errors"] == 0, err
    assert res["msgs"] > 0
    assert (res["tls_version"], res["tls_cipher"]) == ("TLSv1.3", "TLS_AES_128_GCM_SHA256")
    if "--handshakes" in mode:
        assert res["handshakes"] is True
        assert res["connections_opened"] >= res["msgs"]
    assert status == 0


def test_plain_loadgen_refuses_tls(built):
    """The plain build has no OpenSSL: --tls is a usage error naming the
    TLS build, not a silent plaintext run."""
    r = subprocess.run([str(built["loadgen"]), "--port", "1", "--tls"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "without TLS" in r.stderr


def test_missing_openssl_headers_say_how_to_install_them(monkeypatch, tmp_path):
    real_run = subprocess.run

    def no_openssl(argv, **kw):
        if "-lssl" in argv:
            return subprocess.CompletedProcess(
                argv, 1, "", "c_echo_tls.c:40:10: fatal error: openssl/err.h: "
                "No such file or directory")
        return real_run(argv, **kw)

    monkeypatch.setattr(subprocess, "run", no_openssl)
    with pytest.raises(_cli.Failure) as exc:
        harness.build_tls("c_echo", tmp_path)
    assert "apt-get install libssl-dev" in str(exc.value)


def test_make_certs_without_trustme_uses_openssl(monkeypatch, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    monkeypatch.setitem(sys.modules, "trustme", None)     # import fails
    cert, key, how = harness.make_certs(tmp_path)
    assert how == "openssl req"
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)                          # a usable pair


def _tls_args(argv):
    import argparse
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(argv)


def test_plan_tls(tmp_path):
    """--tls alone plans the TLS group (every TLS server and its plaintext
    counterpart, 64 B and 4 KiB at depths 1 and 16) and the handshake group
    (iocport-python-tls against uvloop-tls); only the TLS servers get the
    certificate."""
    groups = scenarios.plan(_tls_args(["--tls"]), tmp_path, ("C.pem", "K.pem"))
    assert [g[0] for g in groups] == ["tls", "handshakes"]
    _, servers, scs = groups[0]
    names = [s[0] for s in servers]
    for tls_name, plain in scenarios.TLS_PAIRS:
        assert tls_name in names and plain in names
    for name, kind, extra in servers:
        assert ("C.pem" in extra) == scenarios.is_tls(name), name
    assert {(sc["size"], sc["depth"], sc["mode"]) for sc in scs} == \
        {(s, d, "tls") for s in (64, 4096) for d in (1, 16)}
    assert [s[0] for s in groups[1][1]] == ["iocport-python-tls", "uvloop-tls"]
    assert [sc["mode"] for sc in groups[1][2]] == ["handshake"]
    keys = [scenarios.scenario_name(sc) for _, _, s in groups for sc in s]
    assert len(set(keys)) == 5
    # the TLS keys do not collide with the plaintext throughput group's
    both = scenarios.plan(_tls_args(["--tls", "--full"]), tmp_path)
    keys = [scenarios.scenario_name(sc) for _, _, s in both for sc in s]
    assert len(keys) == len(set(keys))
    only = scenarios.plan(_tls_args(["--tls", "--only", "c-tls,c-epoll"]), tmp_path)
    assert [g[0] for g in only] == ["tls"]


def _fake_runs(*per_cpu, cipher="TLS_AES_128_GCM_SHA256"):
    return [{"msgs_per_cpu_s": v, "msgs_per_sec": v, "p99_us": 100.0, "msgs": v,
             "server_cpu_s": 1.0, "server_sys_s": 0.5, "tls_version": "TLSv1.3",
             "tls_cipher": cipher} for v in per_cpu]


def test_tls_tables_pair_rounds_and_set_the_targets():
    """The TLS ratios: the python handler over the better of uvloop and
    asyncio round by round (targets 1.5 at depth 1 and 2.0 at depth 16, for
    64 B), native over c-tls (0.9, every size); the cost of TLS per server
    (TLS over plaintext, round by round); handshakes against uvloop."""
    scs = [dict(size=size, depth=d, conns=50, framing="len4", mode="tls", rounds=3)
           for size in (64, 4096) for d in (1, 16)]
    hs = [dict(size=64, depth=1, conns=50, framing="len4", mode="handshake", rounds=3)]
    results = {}
    for sc in scs:
        results[scenarios.scenario_name(sc)] = {
            "iocport-python-tls": _fake_runs(300, 200, 400),
            "uvloop-tls": _fake_runs(100, 200, 100),
            "asyncio-tls": _fake_runs(150, 50, 100),     # best: 150, 200, 100
            "iocport-native-tls": _fake_runs(90, 90, 90),
            "c-tls": _fake_runs(100, 100, 100),
            "iocport-python": _fake_runs(600, 400, 800),
            "uvloop": _fake_runs(400, 400, 400),
        }
    results["handshakes, 64 B"] = {"iocport-python-tls": _fake_runs(30, 20, 25),
                                   "uvloop-tls": _fake_runs(10, 10, 10)}
    text, rows = report.ratio_table(scs + hs, results, {})
    by = {(r["ratio"], r["scenario"]): r for r in rows}
    best = by[("TLS: python handler / best of uvloop,asyncio", "tls, 64 B, depth 1")]
    assert best["rounds"] == [2.0, 1.0, 4.0] and best["per_cpu"] == 2.0
    assert best["target"] == 1.5
    assert by[("TLS: python handler / best of uvloop,asyncio", "tls, 64 B, depth 16")][
        "target"] == 2.0
    assert by[("TLS: python handler / best of uvloop,asyncio", "tls, 4 KiB, depth 16")][
        "target"] is None
    native = by[("TLS: native / c-tls", "tls, 4 KiB, depth 1")]
    assert native["target"] == 0.9 and native["per_cpu"] == 0.9
    line = next(ln for ln in text.splitlines() if ln.startswith("| TLS: native")
                and "4 KiB, depth 1" in ln)
    assert line.endswith("| 0.90-0.90 | >= 0.9 | yes |")
    line = next(ln for ln in text.splitlines() if ln.startswith("| TLS: python")
                and "64 B, depth 16" in ln)
    assert line.endswith("| 1.00-4.00 | >= 2.0 | yes |")
    assert by[("handshakes: python handler / uvloop", "handshakes, 64 B")]["per_cpu"] == 2.5
    # the C server's ratio, without a target; the kernel-time bound where a
    # target is set (each run: 0.5 s of its 1 CPU-second in the kernel)
    c = by[("TLS: c-tls / best of uvloop,asyncio", "tls, 64 B, depth 1")]
    assert c["target"] is None and c["rounds"] == [100 / 150, 0.5, 1.0]
    bounds = [r for r in rows if r["bound"]]
    assert {r["scenario"] for r in bounds} == {"tls, 64 B, depth 1", "tls, 64 B, depth 16"}
    assert bounds[0]["rounds"] == [4.0, 2.0, 8.0]

    cost = report.tls_cost_table(scs + hs, results)
    lines = [ln for ln in cost.splitlines() if ln.startswith("| ")][1:]   # no header
    assert len(lines) == 5 * 4      # every pair with a figure, per TLS scenario
    py = next(ln for ln in lines if ln.startswith("| iocport-python |")
              and "64 B, depth 1" in ln)
    assert py == "| iocport-python | tls, 64 B, depth 1 | 600 | 300 | 0.50 | 0.50-0.50 |"
    # a server run only one way still shows, without a ratio
    c = next(ln for ln in lines if ln.startswith("| c-epoll |"))
    assert c.endswith("| - | 100 | - | - |")
    assert not any("handshakes" in ln for ln in lines)

    neg = report.tls_negotiated(results)
    assert "uvloop-tls TLSv1.3 TLS_AES_128_GCM_SHA256" in neg
    assert "iocport-python " not in neg          # plaintext servers are not listed
    results["tls, 64 B, depth 1"]["c-tls"] = _fake_runs(1, cipher="TLS_AES_256_GCM_SHA384")
    assert "c-tls TLSv1.3 TLS_AES_128_GCM_SHA256, TLSv1.3 TLS_AES_256_GCM_SHA384" in \
        report.tls_negotiated(results)


def _bench_smoke(tmp_path, *options, needs_uvloop=True):
    """`python -m iocport bench OPTIONS` with tiny runs (0.2 s, one round):
    its stdout and its --json figures, once it has exited 0 with no error
    counted in any run.  Skips without uvloop (a rival in every group but
    --http's, where a rival missing is skipped by the run itself)."""
    import importlib.util
    if needs_uvloop and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop is not installed")
    out = tmp_path / "figures.json"
    r = subprocess.run([sys.executable, "-m", "iocport", "bench", *options,
                        "--seconds", "0.2", "--rounds", "1", "--no-chart", "--json", str(out)],
                       capture_output=True, text=True, timeout=110, env=child_env())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    figures = json.loads(out.read_text())
    for per in figures["results"].values():
        for name, runs in per.items():
            assert all(run.get("errors") == 0 for run in runs), (name, runs)
    return r.stdout, figures


def _every_server_measured(text, key, servers):
    """Scenario `key`'s table in `text` has a figure for each of `servers`."""
    table = text.split(f"## {key}, 50 connections")[1].split("\n## ")[0]
    for name, _, _ in servers:
        assert re.search(rf"\n\| {name} \| [0-9,]+ \|", table), (name, table)


def test_bench_tls_smoke(built_tls, in_child_cwd, tmp_path):
    """`bench --tls` end to end with tiny runs: every TLS server and its
    plaintext counterpart in each scenario's table, the ratio rows with
    their targets, the cost-of-TLS table, the handshake table, the cipher
    negotiated; no errors.  No figure is judged."""
    text, figures = _bench_smoke(tmp_path, "--tls", "--sizes", "64")
    for key in ("tls, 64 B, depth 1", "tls, 64 B, depth 16"):
        _every_server_measured(text, key, scenarios.TLS_SERVERS)
    assert "## handshakes, 64 B, 50 connections, a new TLS connection per message" in text
    for label, *_ in scenarios.TLS_RATIOS:
        assert f"| {label} | tls, 64 B, depth 1 |" in text
    assert "| TLS: python handler / best of uvloop,asyncio | tls, 64 B, depth 16 |" in text
    assert re.search(r"\| handshakes: python handler / uvloop \| handshakes, 64 B \|", text)
    cost = text.split("## The cost of TLS")[1]
    for _, plain in scenarios.TLS_PAIRS:
        assert f"| {plain} | tls, 64 B, depth 16 |" in cost
    assert "TLS_AES_128_GCM_SHA256" in text.split("negotiated:")[1]
    assert [g["title"] for g in figures["groups"]] == ["tls", "handshakes"]


# ---- bench --async ----------------------------------------------------------

@pytest.mark.parametrize("framing", ["len4", "line"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_streams_rival_echoes(built, loop, framing, in_child_cwd):
    """The streams rival (start_server, readexactly or readuntil, write,
    drain) answers the load generator with no error, pipelined, in both
    framings, and exits 0 on SIGTERM with its connections' Tasks ended."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    argv = [sys.executable, str(harness.benchmarks_dir() / "rivals.py"), "asyncio",
            "--streams", "--loop", loop, "--port", "0", "--framing", framing]
    srv = harness.ServerProc("streams", argv, env=child_env())
    try:
        assert "streams" in srv.banner
        rc, res, err = _loadgen(built, srv.host, srv.port, framing=framing, pid=srv.pid,
                                seconds=0.5)
    finally:
        status = srv.stop()
    assert rc == 0 and res["errors"] == 0, err
    assert res["msgs"] > 0
    assert status == 0


def test_streams_rival_refuses_store_and_threads(tmp_path):
    rivals = str(harness.benchmarks_dir() / "rivals.py")
    for argv in (["asyncio", "--streams", "--store", str(tmp_path / "s")],
                 ["threads", "--streams"]):
        r = subprocess.run([sys.executable, rivals, *argv, "--port", "0"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and "--streams" in r.stderr.splitlines()[-1], r.stderr
    assert not (tmp_path / "s").exists()


def test_plan_async(tmp_path):
    """--async alone plans the coroutine-handler group: echo --async (on
    asyncio's loop and on uvloop's), the plain handler, uvloop's Protocol
    and streams servers, 64 B at depths 1 and 16, in keys of their own."""
    groups = scenarios.plan(_tls_args(["--async"]), tmp_path)
    assert [g[0] for g in groups] == ["async"]
    _, servers, scs = groups[0]
    assert [s[0] for s in servers] == ["iocport-async", "iocport-async-uvloop",
                                       "iocport-python", "uvloop", "uvloop-streams"]
    extra = {name: e for name, _, e in servers}
    assert extra["iocport-async"] == ["--async"]
    assert "--streams" in extra["uvloop-streams"] and "--streams" not in extra["uvloop"]
    assert [(sc["size"], sc["depth"], sc["mode"]) for sc in scs] == \
        [(64, 1, "async"), (64, 16, "async")]
    both = scenarios.plan(_tls_args(["--async", "--full"]), tmp_path)
    assert [g[0] for g in both] == ["throughput", "latency", "store", "async"]
    keys = [scenarios.scenario_name(sc) for _, _, s in both for sc in s]
    assert len(keys) == len(set(keys))
    only = scenarios.plan(_tls_args(["--async", "--only", "iocport-async,uvloop-streams"]),
                          tmp_path)
    assert [s[0] for s in only[0][1]] == ["iocport-async", "uvloop-streams"]
    assert "uvloop-streams" in scenarios.server_names()


def test_async_ratios_pair_rounds_and_set_the_targets():
    """The async targets (issue 16), judged per server CPU-second round by
    round: echo --async over uvloop's Protocol >= 1.2 at depth 1 and 1.5 at
    depth 16, over uvloop's streams server >= 1.5 and 5.0; for 64 B only;
    the kernel-time bound beside each; the context rows without a target."""
    scs = [dict(size=size, depth=d, conns=50, framing="len4", mode="async", rounds=3)
           for size in (64, 4096) for d in (1, 16)]
    results = {}
    for sc in scs:
        results[scenarios.scenario_name(sc)] = {
            "iocport-async": _fake_runs(300, 200, 600),
            "iocport-async-uvloop": _fake_runs(330, 220, 660),
            "iocport-python": _fake_runs(600, 400, 800),
            "uvloop": _fake_runs(200, 200, 200),
            "uvloop-streams": _fake_runs(100, 50, 100),
        }
    text, rows = report.ratio_table(scs, results, {})
    by = {(r["ratio"], r["scenario"]): r for r in rows}
    targets = {(r["ratio"], r["scenario"]): r["target"] for r in rows
               if r["target"] is not None and not r["bound"]}
    assert targets == {
        ("async handler / uvloop Protocol", "async, 64 B, depth 1"): 1.2,
        ("async handler / uvloop Protocol", "async, 64 B, depth 16"): 1.5,
        ("async handler / uvloop streams", "async, 64 B, depth 1"): 1.5,
        ("async handler / uvloop streams", "async, 64 B, depth 16"): 5.0,
    }
    proto = by[("async handler / uvloop Protocol", "async, 64 B, depth 1")]
    assert proto["rounds"] == [1.5, 1.0, 3.0] and proto["per_cpu"] == 1.5
    streams = by[("async handler / uvloop streams", "async, 64 B, depth 16")]
    assert streams["rounds"] == [3.0, 4.0, 6.0] and streams["per_cpu"] == 4.0
    line = next(ln for ln in text.splitlines()
                if ln.startswith("| async handler / uvloop streams |") and "depth 16" in ln)
    assert line.endswith("| 3.00-6.00 | >= 5.0 | NO |")
    # each run: 0.5 of its CPU-second in the kernel, so the bound is twice
    bounds = {(r["ratio"], r["scenario"]): r for r in rows if r["bound"]}
    assert len(bounds) == 4
    assert bounds[("bound, the async handler's kernel time alone / uvloop streams",
                   "async, 64 B, depth 16")]["per_cpu"] == 8.0
    sync = by[("async handler / sync handler", "async, 4 KiB, depth 16")]
    assert sync["target"] is None and sync["rounds"] == [0.5, 0.5, 0.75]
    assert by[("async handler on uvloop / uvloop streams", "async, 64 B, depth 1")][
        "rounds"] == pytest.approx([3.3, 4.4, 6.6])


def test_bench_async_smoke(in_child_cwd, tmp_path):
    """`bench --async` end to end with tiny runs: every server of the group
    in each scenario's table, every ratio row with its target, no errors.
    No figure is judged."""
    text, figures = _bench_smoke(tmp_path, "--async")
    for key in ("async, 64 B, depth 1", "async, 64 B, depth 16"):
        _every_server_measured(text, key, scenarios.ASYNC_SERVERS)
        for label, _, _, depth, target, _ in scenarios.ASYNC_RATIOS:
            if depth in (None, int(key.split()[-1])):
                line = next(ln for ln in text.splitlines()
                            if ln.startswith(f"| {label} | {key} |"))
                assert f"| {f'>= {target}' if target else ''} |" in line, line
    assert "async on asyncio" in text and "async on uvloop" in text
    assert "streams: readexactly, write, drain" in text
    assert [g["title"] for g in figures["groups"]] == ["async"]


# ---- bench --http -----------------------------------------------------------

def test_plan_http(tmp_path):
    """--http alone plans the HTTP group: iocport's Python handler and
    --native, the Python rivals and nginx, under h2load at 1 and 16 in
    flight, wrk at 1, and h2load at a fixed rate for the Python servers."""
    groups = scenarios.plan(_tls_args(["--http"]), tmp_path)
    assert [g[0] for g in groups] == ["http"]
    _, servers, scs = groups[0]
    assert [s[0] for s in servers] == ["iocport-python", "iocport-native", "granian-rsgi",
                                       "granian-asgi", "uvicorn", "socketify", "nginx"]
    assert all(scenarios.is_http(kind) for _, kind, _ in servers)
    keys = [scenarios.scenario_name(sc) for sc in scs]
    assert keys == ["http, h2load, depth 1", "http, h2load, depth 16", "http, wrk, depth 1",
                    f"http, h2load at {scenarios.HTTP_LATENCY_RATE:,} req/s"]
    assert all(sc["conns"] == 50 and sc["mode"] == "http" for sc in scs)
    assert scs[-1]["servers"] == ("iocport-python", *scenarios.HTTP_PYTHON)
    both = scenarios.plan(_tls_args(["--http", "--full"]), tmp_path)
    names = [scenarios.scenario_name(sc) for _, _, s in both for sc in s]
    assert [g[0] for g in both][-1] == "http" and len(names) == len(set(names))
    only = scenarios.plan(_tls_args(["--http", "--only", "iocport-native,nginx"]), tmp_path)
    assert [s[0] for s in only[0][1]] == ["iocport-native", "nginx"]
    argv = harness.server_argv("http-rival", ["granian", "--interface", "asgi"], "len4",
                               harness.benchmarks_dir(), harness.benchmarks_dir())
    assert argv[1].endswith("http_rivals.py") and argv[2:] == [
        "granian", "--interface", "asgi", "--port", "0"]


H2LOAD_OUT = """
finished in 1.01s, 327712.00 req/s, 35.63MB/s
requests: 327712 total, 328512 started, 327712 done, 327700 succeeded, 12 failed, 2 errored, 1 timeout
status codes: 327690 2xx, 0 3xx, 10 4xx, 0 5xx
"""
WRK_OUT = """Running 1s test @ http://127.0.0.1:18080/
  Latency Distribution
     50%  566.00us
     75%    1.03ms
     90%    4.44ms
     99%   51.37ms
  44275 requests in 1.01s, 4.81MB read
  Socket errors: connect 0, read 3, write 0, timeout 0
  Non-2xx or 3xx responses: 5
Requests/sec:  43743.78
"""


def test_http_clients_output_is_parsed_and_errors_counted():
    """h2load's and wrk's summaries: the requests answered 2xx, the
    duration, the latency percentiles (wrk), and every error or non-2xx
    answer counted; no summary at all is a failure."""
    h = harness.parse_h2load(H2LOAD_OUT)
    assert h["msgs"] == 327690 and h["seconds"] == pytest.approx(1.01)
    assert h["errors"] == 2 + 10 and "10 4xx" in h["why"]
    clean = harness.parse_h2load(H2LOAD_OUT.replace("12 failed, 2 errored, 1 timeout",
                                                    "0 failed, 0 errored, 0 timeout")
                                 .replace("327690 2xx, 0 3xx, 10 4xx", "327700 2xx, 0 3xx, 0 4xx"))
    assert clean["errors"] == 0 and "why" not in clean
    w = harness.parse_wrk(WRK_OUT)
    assert w["msgs"] == 44270 and w["errors"] == 3 + 5
    assert w["p50_us"] == pytest.approx(566.0) and w["p99_us"] == pytest.approx(51370.0)
    assert "failed" in harness.parse_h2load("") and "failed" in harness.parse_wrk("oops")


def test_latency_log_percentiles(tmp_path):
    """h2load's --log-file: the first `skip` seconds left out, percentiles
    of the rest, non-2xx lines counted."""
    log = tmp_path / "log.tsv"
    t0 = 1_700_000_000_000_000
    rows = [(t0 + i * 1000, 200, 5000) for i in range(100)]          # first 0.1 s: slow
    rows += [(t0 + 1_000_000 + i, 200, 100 + i) for i in range(1000)]
    rows.append((t0 + 2_000_000, 503, 10))
    log.write_text("".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows))
    lat = harness.latency_log(log, 0.5)
    assert lat["logged"] == 1001 and lat["non_2xx"] == 1
    assert lat["p50_us"] == 599 and lat["p99_us"] == 1089


def test_tree_cpu_counts_every_process_of_the_server():
    """A server's CPU time is its process's and every descendant's: a child
    that burns 0.3 CPU-seconds shows in its parent's tree."""
    code = ("import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', "
            "'import time\\nwhile time.process_time() < 0.3: pass\\nprint(1, flush=True)\\n"
            "time.sleep(60)'], stdout=subprocess.PIPE, text=True); c.stdout.readline(); "
            "print('ready', flush=True); sys.stdin.readline(); c.kill()")
    parent = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        cpu, kernel, procs = harness.tree_cpu(parent.pid)
        assert procs == 2 and cpu >= 0.25 and 0 <= kernel <= cpu
        assert harness.tree_cpu(2 ** 22 + 1) == (0.0, 0.0, 0)       # no such process
    finally:
        parent.stdin.close()
        parent.wait(10)
        parent.stdout.close()


def test_http_ratios_pair_rounds_and_set_the_targets():
    """The HTTP targets (issue 17), per server CPU-second round by round:
    the python handler over the best Python server >= 2.0 without
    pipelining (h2load and wrk) and 3.0 with 16 in flight; --native over
    nginx >= 1.0 and 3.0; p99 at the fixed load against the Python server
    with the lowest p99 that round, at most 1.0."""
    scs = [dict(size=0, depth=d, conns=50, framing="HTTP/1.1", mode="http", client=c,
                rounds=2) for c, d in scenarios.HTTP_RUNS]
    lat = dict(size=0, depth=1, conns=50, framing="HTTP/1.1", mode="http", client="h2load",
               rate=1000, rounds=2)
    results = {}
    for sc in scs:
        results[scenarios.scenario_name(sc)] = {
            "iocport-python": _fake_runs(400, 300), "iocport-native": _fake_runs(800, 600),
            "granian-rsgi": _fake_runs(100, 200), "uvicorn": _fake_runs(200, 50),
            "nginx": _fake_runs(400, 400)}
    results[scenarios.scenario_name(lat)] = {
        "iocport-python": [{"p99_us": 200.0}, {"p99_us": 300.0}],
        "granian-rsgi": [{"p99_us": 400.0}, {"p99_us": 100.0}],
        "uvicorn": [{"p99_us": 800.0}, {"p99_us": 200.0}]}
    text, rows = report.ratio_table([*scs, lat], results, {})
    targets = {(r["ratio"], r["scenario"]): r["target"] for r in rows
               if r["target"] is not None and not r["bound"]}
    py, native = "http: python handler / best Python server", "http: native / nginx"
    assert targets == {
        (py, "http, h2load, depth 1"): 2.0, (py, "http, h2load, depth 16"): 3.0,
        (py, "http, wrk, depth 1"): 2.0,
        (native, "http, h2load, depth 1"): 1.0, (native, "http, h2load, depth 16"): 3.0,
        (native, "http, wrk, depth 1"): 1.0,
        ("http p99 latency, python handler / best Python server", lat_key(lat)): 1.0}
    by = {(r["ratio"], r["scenario"]): r for r in rows}
    assert by[(py, "http, h2load, depth 16")]["rounds"] == [2.0, 1.5]     # 400/200, 300/200
    assert by[(native, "http, wrk, depth 1")]["per_cpu"] == 1.75
    p99 = by[("http p99 latency, python handler / best Python server", lat_key(lat))]
    assert p99["rounds"] == [0.5, 3.0] and p99["target_is_max"]      # 200/400, 300/100
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {py} |")
                and "depth 16" in ln)
    assert line.endswith("| 1.50-2.00 | >= 3.0 | NO |")


def lat_key(sc):
    return scenarios.scenario_name(sc)


def test_missing_http_rivals_say_how_to_get_them(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in (
        "granian", "httptools", "socketify") else real(name, *a))
    assert harness.rival_missing("granian-rsgi", "http-rival") == "granian"
    assert harness.rival_missing("iocport-python", "iocport-http") is None
    if real("uvicorn") is not None and real("uvloop") is not None:
        assert harness.rival_missing("uvicorn", "http-rival") == "httptools"
    assert harness.server_missing_note("socketify", "http-rival") == \
        "not installed: pip install socketify"
    monkeypatch.setattr(harness, "find_tool", lambda name: None)
    monkeypatch.setattr(bench, "find_tool", lambda name: None)
    assert harness.server_missing_note("nginx", "http-rival") == \
        "not installed: apt-get install nginx"
    assert harness.server_missing_note("iocport-native", "iocport-http") is None
    groups = [("http", [], [dict(mode="http", client="wrk"), dict(mode="http", client="h2load")])]
    lines = bench.http_clients_present(groups)
    assert groups == [] and len(lines) == 2 and "apt-get install nghttp2-client" in lines[0]


@pytest.mark.parametrize("rival", [["granian", "--interface", "rsgi"],
                                   ["granian", "--interface", "asgi"], ["uvicorn"],
                                   ["socketify"], ["nginx"]], ids=" ".join)
def test_http_rivals_answer_hello(rival, in_child_cwd):
    """Each HTTP rival starts (or is skipped, said why), answers GET / with
    200 text/plain "hello, world" on a keep-alive connection, and exits 0
    on SIGTERM."""
    name = "nginx" if rival == ["nginx"] else "-".join(rival[::2])
    note = harness.server_missing_note(name, "http-rival")
    if note:
        pytest.skip(note)
    argv = harness.server_argv("http-rival", rival, "len4", harness.benchmarks_dir(),
                               harness.benchmarks_dir())
    srv = harness.ServerProc(name, argv, env=child_env())
    try:
        assert harness.http_check(srv.host, srv.port) is None
        assert harness.http_check(srv.host, srv.port) is None
        _, _, procs = harness.tree_cpu(srv.pid)
        assert procs >= 2                  # the launcher and the server it runs
    finally:
        status = srv.stop()
    assert status == 0


def test_bench_http_smoke(in_child_cwd, tmp_path):
    """`bench --http` end to end with tiny runs: each server measured in
    every scenario it is in, or skipped with its reason (a rival not
    installed); every ratio row with its target; no errors.  No figure is
    judged."""
    if not (harness.find_tool("h2load") and harness.find_tool("wrk")):
        pytest.skip("h2load and wrk are needed: apt-get install nghttp2-client wrk")
    text, figures = _bench_smoke(tmp_path, "--http", needs_uvloop=False)
    assert [g["title"] for g in figures["groups"]] == ["http"]
    for key in ("http, h2load, depth 1", "http, h2load, depth 16", "http, wrk, depth 1"):
        table = text.split(f"## {key}, 50 connections")[1].split("\n## ")[0]
        for name, kind, _ in scenarios.HTTP_SERVERS:
            why = harness.server_missing_note(name, kind)
            pattern = re.escape(why) if why else "[0-9,]+"
            assert re.search(rf"\n\| {name} \| {pattern} \|", table), (name, table)
        for label, _, _, depth, target, _ in scenarios.HTTP_RATIOS:
            if depth in (None, int(key.split()[-1])):
                line = next(ln for ln in text.splitlines()
                            if ln.startswith(f"| {label} | {key} |"))
                assert f"| {f'>= {target}' if target else ''} |" in line, line
    assert "req/s, 50 connections, h2load --rps" in text
    assert "| http p99 latency, python handler / best Python server |" in text
    assert "HTTP latency: h2load --rps" in text


# ---- bench --resp -----------------------------------------------------------

def test_plan_resp(tmp_path):
    """--resp alone plans the RESP group: kv.py and redis-server with
    persistence off under SET and GET at -P 1 and -P 16, and the
    append-only pair under SET at -P 1 (kv.py's file in the scratch
    directory); --only narrows it."""
    groups = scenarios.plan(_tls_args(["--resp"]), tmp_path)
    assert [g[0] for g in groups] == ["resp"]
    _, servers, scs = groups[0]
    assert [s[0] for s in servers] == ["kv.py", "redis-server", "kv.py-aof", "redis-server-aof"]
    assert all(scenarios.is_resp(kind) for _, kind, _ in servers)
    kv_aof = dict((n, e) for n, _, e in servers)["kv.py-aof"]
    assert kv_aof[-2:] == ["--aof", str(tmp_path / "kv.aof")] and "everysec" in kv_aof
    keys = [scenarios.scenario_name(sc) for sc in scs]
    assert keys == ["resp, SET, -P 1", "resp, GET, -P 1", "resp, SET, -P 16", "resp, GET, -P 16",
                    "resp, AOF everysec, SET, -P 1"]
    assert all(sc["conns"] == 50 and sc["client"] == "redis-benchmark" for sc in scs)
    assert scs[0]["servers"] == ("kv.py", "redis-server")
    assert scs[-1]["servers"] == ("kv.py-aof", "redis-server-aof")
    only = scenarios.plan(_tls_args(["--resp", "--only", "kv.py,redis-server"]), tmp_path)
    assert [s[0] for s in only[0][1]] == ["kv.py", "redis-server"]
    argv = harness.server_argv("resp-rival", ["redis", "--appendfsync", "everysec"], "len4",
                               harness.benchmarks_dir(), harness.benchmarks_dir())
    assert argv[1].endswith("resp_rivals.py") and argv[2:] == [
        "redis", "--appendfsync", "everysec", "--port", "0"]


REDIS_BENCHMARK_CSV = (
    '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
    '"p99_latency_ms","max_latency_ms"\n'
    '"SET","46411.00","0.961","0.088","0.383","3.503","5.343","20.015"\n')


def test_redis_benchmark_output_is_parsed_and_errors_fail_the_run():
    """redis-benchmark --csv: the row of the command (requests per second,
    p50 and p99), the requests asked for as the completed count; its -e
    notice is no error; an exit status other than 0, no row, or any other
    line (an error reply, a lost connection, a warning) fails the run."""
    notice = harness.REDIS_BENCHMARK_NOTICE + " We now immediately exit on error.\n"
    ok = harness.parse_redis_benchmark(REDIS_BENCHMARK_CSV, notice, 0, "SET", 92822)
    assert ok["msgs"] == 92822 and ok["msgs_per_sec"] == pytest.approx(46411.0)
    assert ok["seconds"] == pytest.approx(2.0) and ok["errors"] == 0
    assert ok["p50_us"] == pytest.approx(383.0) and ok["p99_us"] == pytest.approx(5343.0)
    header = REDIS_BENCHMARK_CSV.splitlines()[0] + "\n"
    for out, err, rc in [
            (header, notice + "Error from server: ERR unknown command 'SET'\n", 1),
            (header, "Error: Connection reset by peer\n", 1),
            (REDIS_BENCHMARK_CSV, "WARNING: Could not fetch server CONFIG\n", 0),
            (REDIS_BENCHMARK_CSV, "", 1),
            (header, "", 0)]:
        bad = harness.parse_redis_benchmark(out, err, rc, "SET", 1000)
        assert bad["errors"] == 1 and bad["failed"].startswith(f"redis-benchmark exit {rc}")
    assert "ERR unknown command" in harness.parse_redis_benchmark(
        header, notice + "Error from server: ERR unknown command 'SET'\n", 1, "SET", 1)["failed"]
    # another command's row is not this one's
    assert "failed" in harness.parse_redis_benchmark(REDIS_BENCHMARK_CSV, "", 0, "GET", 1)


def test_resp_ratios_pair_rounds_and_set_the_targets():
    """The RESP targets (issue 18), per server CPU-second round by round:
    kv.py over redis-server >= 1.0 at -P 1 and 0.5 at -P 16, GET and SET
    each; kv.py with its AOF synced every second over redis-server's >= 0.8
    (SET, -P 1); each row only where both servers run."""
    plain, aof = ("kv.py", "redis-server"), ("kv.py-aof", "redis-server-aof")
    scs = [dict(size=0, depth=d, conns=50, framing="RESP", mode="resp", command=c,
                client="redis-benchmark", servers=plain, rounds=2)
           for c, d in scenarios.RESP_RUNS]
    scs.append(dict(size=0, depth=1, conns=50, framing="RESP", mode="resp", command="SET",
                    client="redis-benchmark", servers=aof, rounds=2))
    results = {}
    for sc in scs:
        names = sc["servers"]
        results[scenarios.scenario_name(sc)] = {names[0]: _fake_runs(90, 120),
                                                names[1]: _fake_runs(100, 100)}
    text, rows = report.ratio_table(scs, results, {})
    targets = {(r["ratio"], r["scenario"]): r["target"] for r in rows
               if r["target"] is not None and not r["bound"]}
    kv = "resp: kv.py / redis-server"
    assert targets == {
        (kv, "resp, SET, -P 1"): 1.0, (kv, "resp, GET, -P 1"): 1.0,
        (kv, "resp, SET, -P 16"): 0.5, (kv, "resp, GET, -P 16"): 0.5,
        ("resp: kv.py AOF everysec / redis-server appendonly everysec",
         "resp, AOF everysec, SET, -P 1"): 0.8}
    by = {(r["ratio"], r["scenario"]): r for r in rows}
    assert by[(kv, "resp, GET, -P 16")]["rounds"] == [0.9, 1.2]
    line = next(ln for ln in text.splitlines()
                if ln.startswith(f"| {kv} |") and "GET, -P 1 |" in ln)
    assert line.endswith("| 0.90-1.20 | >= 1.0 | yes |")      # median 1.05


def test_resp_servers_missing_say_how_to_get_them(monkeypatch):
    """kv.py from a copy without examples/, redis-server not installed, and
    redis-benchmark missing: each skipped with one line saying how to get it."""
    monkeypatch.setattr(harness, "kv_script", lambda: None)
    assert harness.server_missing_note("kv.py-aof", "resp-kv") == f"not run: {harness.KV_HINT}"
    monkeypatch.setattr(harness, "find_tool", lambda name: None)
    monkeypatch.setattr(bench, "find_tool", lambda name: None)
    assert harness.server_missing_note("redis-server", "resp-rival") == \
        "not installed: apt-get install redis-server"
    groups = [("resp", [], [dict(mode="resp", client="redis-benchmark")])]
    lines = bench.http_clients_present(groups)
    assert groups == [] and lines == ["redis-benchmark not found, so its scenarios were not "
                                      "run: apt-get install redis-tools"]


def test_bench_resp_smoke(in_child_cwd, tmp_path):
    """`bench --resp` end to end with tiny runs: each server measured in
    every scenario it is in, or skipped with its reason (redis-server not
    installed, kv.py not beside an installed package); every ratio row with
    its target; no errors; the line on the targets not measured.  No
    figure is judged."""
    if harness.find_tool("redis-benchmark") is None:
        pytest.skip(f"redis-benchmark is needed: {harness.tool_hint('redis-benchmark')}")
    text, figures = _bench_smoke(tmp_path, "--resp", needs_uvloop=False)
    assert [g["title"] for g in figures["groups"]] == ["resp"]
    kinds = {name: kind for name, kind, _ in scenarios.RESP_SERVERS}
    for sc in figures["groups"][0]["scenarios"]:
        key = scenarios.scenario_name(sc)
        table = text.split(f"## {key}, 50 connections")[1].split("\n## ")[0]
        for name in sc["servers"]:
            why = harness.server_missing_note(name, kinds[name])
            pattern = re.escape(why) if why else "[0-9,]+"
            assert re.search(rf"\n\| {re.escape(name)} \| {pattern} \|", table), (name, table)
        for label, a, b, depth, target, command in scenarios.RESP_RATIOS:
            if a in sc["servers"] and depth in (None, sc["depth"]):
                line = next(ln for ln in text.splitlines()
                            if ln.startswith(f"| {label} | {key} |"))
                goal = target if command in (None, sc["command"]) else None
                assert f"| {f'>= {goal}' if goal else ''} |" in line, line
    assert "RESP: not measured here yet: issue 18's iocport client" in text
