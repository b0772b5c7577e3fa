"""RESP in the engine: RESP() framing, conn.reply() and conn.defer(), the
order of replies, Redis's protocol errors, on both backends; and
examples/kv.py against real clients nobody here wrote (redis-cli,
redis-benchmark, redis-py sync and asyncio), its AOF replayed after a
SIGKILL.  Replies are read back with redis-py's own RESP parsers."""
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest

import iocport
from conftest import (CHILD_CWD, DEADLINE, TREE, child_env, needs_tree, recv_until_eof,
                      tool_env, wait_for)
from iocport import resp

pytestmark = pytest.mark.timeout(90)


def read_replies(sock, count, protocol=2):
    """`count` whole replies from a blocking socket, decoded by iocport's
    client-side framer (tested against redis-py's and hiredis's parsers in
    tests/test_resp.py)."""
    parser = iocport._iocport.RESPParser(client=True)
    got = []
    while len(got) < count:
        data = sock.recv(65536)
        assert data, f"closed after {len(got)} of {count} replies"
        got += parser.feed(data)
    return got


def cmd(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def echo_args(conn, args):
    conn.reply(args)


@pytest.fixture
def resp_server(make_server):
    def make(handler=echo_args, **kw):
        kw.setdefault("framing", iocport.RESP())
        return make_server(handler, **kw)
    return make


def test_multibulk_and_inline(resp_server, client):
    srv = resp_server()
    s = client(srv.addresses[0])
    s.sendall(cmd("SET", "k", "v") + b"PING\r\n" + b'ECHO "a b" \'c\'\r\n'
              + b"\r\n" + b"*0\r\n" + cmd("x" * 70000))
    assert read_replies(s, 4) == [[b"SET", b"k", b"v"], [b"PING"],
                                  [b"ECHO", b"a b", b"c"], [b"x" * 70000]]


def test_reply_types(resp_server, client):
    values = [b"bulk", "str", 42, -7, 2 ** 70, None, 1.5, True, False,
              [1, [b"a", None]], (b"t",), {b"k": 1}, {b"s"},
              resp.OK, resp.SimpleString(b"FINE"), resp.Error("ERR nope")]
    it = iter(values)
    srv = resp_server(lambda conn, args: conn.reply(next(it)))
    s = client(srv.addresses[0])
    s.sendall(b"".join(cmd("X") for _ in values))
    got = read_replies(s, len(values))
    assert got[:5] == [b"bulk", b"str", 42, -7, str(2 ** 70).encode()]  # RESP2: a bulk
    assert got[5] is None and got[6] == b"1.5"          # RESP2: a double is a bulk
    assert got[7:9] == [1, 0]                           # RESP2: bools are ints
    assert got[9:13] == [[1, [b"a", None]], [b"t"], [b"k", 1], [b"s"]]
    assert got[13:15] == [b"OK", b"FINE"]
    assert isinstance(got[15], iocport._iocport.RESPError)
    assert got[15].args[0] == "ERR nope"


def test_resp3(resp_server, client):
    def handler(conn, args):
        if args[0] == b"HELLO":
            conn.resp_protocol = 3
            conn.reply({b"proto": 3})
        else:
            conn.reply([None, True, 1.5, {b"a": b"b"}, {b"s"}])

    srv = resp_server(handler)
    s = client(srv.addresses[0])
    s.sendall(cmd("HELLO", "3") + cmd("X"))
    data = b""
    while not data.endswith(b"+s\r\n") and not data.endswith(b"$1\r\ns\r\n"):
        data += s.recv(4096)
    assert data == (b"%1\r\n$5\r\nproto\r\n:3\r\n"
                    b"*5\r\n_\r\n#t\r\n,1.5\r\n%1\r\n$1\r\na\r\n$1\r\nb\r\n~1\r\n$1\r\ns\r\n")


def test_deferred_replies_keep_command_order(resp_server, client, threads):
    held = []
    all_in = threading.Event()

    def handler(conn, args):
        if args[0] == b"LATER":
            held.append((conn.defer(), args[1]))
            if len(held) == 5:
                all_in.set()
        else:
            conn.reply(args[1])

    def answer_backwards():
        assert all_in.wait(DEADLINE)
        for r, v in reversed(held):
            assert r.reply(v) is True
        with pytest.raises(RuntimeError):
            held[0][0].reply(b"twice")

    srv = resp_server(handler)
    s = client(srv.addresses[0])
    threads(answer_backwards)
    s.sendall(b"".join(cmd("LATER" if i % 2 else "NOW", i) for i in range(10)))
    assert read_replies(s, 10) == [str(i).encode() for i in range(10)]


def test_no_reply_gets_an_error(resp_server, client, caplog):
    def handler(conn, args):
        if args[0] == b"RAISE":
            raise RuntimeError("boom")
        if args[0] == b"DROP":
            conn.defer()       # dropped at once: an error reply
            return
        if args[0] != b"NOTHING":
            conn.reply(b"ok")

    srv = resp_server(handler)
    s = client(srv.addresses[0])
    s.sendall(cmd("NOTHING") + cmd("DROP") + cmd("A"))
    got = read_replies(s, 3)
    assert [type(g).__name__ for g in got[:2]] == ["RESPError"] * 2
    assert got[2] == b"ok"
    assert caplog.text.count("got no reply from its handler") == 1
    s.sendall(cmd("RAISE") + cmd("NEVER"))
    data = recv_until_eof(s)
    assert data == b"-ERR the server's handler failed\r\n"
    wait_for(lambda: srv.stats()["errors"]["handler"] == 1)


PROTOCOL_ERRORS = [
    ("bulk_len", b"*1\r\n$x\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    ("mbulk_len", b"*x\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    ("expected_bulk", b"*1\r\n:1\r\n", b"-ERR Protocol error: expected '$', got ':'\r\n"),
    ("quotes", b'SET "a\r\n', b"-ERR Protocol error: unbalanced quotes in request\r\n"),
    ("bulk_too_big", b"*1\r\n$2000\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    ("inline_too_big", b"x" * 70000, b"-ERR Protocol error: too big inline request\r\n"),
]


@pytest.mark.parametrize("name,raw,reply", PROTOCOL_ERRORS,
                         ids=[p[0] for p in PROTOCOL_ERRORS])
def test_protocol_errors(resp_server, client, name, raw, reply):
    srv = resp_server(framing=iocport.RESP(max_bulk=1000))
    s = client(srv.addresses[0])
    s.sendall(cmd("GOOD") + raw)
    data = recv_until_eof(s)
    assert data == b"*1\r\n$4\r\nGOOD\r\n" + reply
    wait_for(lambda: srv.stats()["errors"]["resp"] == 1)


def test_misuse(backend):
    with pytest.raises(ValueError, match="native_echo"):
        iocport.Server(None, framing=iocport.RESP(), native_echo=True, backend=backend)
    with pytest.raises(ValueError, match="Framer"):
        iocport.Framer(iocport.RESP())
    with pytest.raises(ValueError):
        iocport.RESP(max_args=0)
    assert repr(iocport.RESP(max_bulk=5)) == "RESP(max_bulk=5)"


def test_reply_misuse(resp_server, client):
    results = {}

    def handler(conn, args):
        def attempt(name, fn):
            try:
                fn()
            except Exception as exc:
                results[name] = type(exc)
        attempt("type", lambda: conn.reply(object()))
        attempt("crlf", lambda: conn.reply(resp.SimpleString(b"a\r\nb")))
        attempt("proto", lambda: setattr(conn, "resp_protocol", 4))
        conn.reply(b"fine")
        attempt("none_owed", lambda: conn.reply(b"more"))
        attempt("defer_none", lambda: conn.defer())

    srv = resp_server(handler)
    s = client(srv.addresses[0])
    s.sendall(cmd("X"))
    assert read_replies(s, 1) == [b"fine"]
    assert results == {"type": TypeError, "crlf": ValueError, "proto": ValueError,
                       "none_owed": RuntimeError, "defer_none": RuntimeError}


# ---- examples/kv.py with real clients -------------------------------------------

def need(tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (.ci/run installs it)")


@pytest.fixture
def kv(backend, tmp_path):
    procs = []

    def start(*args):
        p = subprocess.Popen([sys.executable, str(TREE / "examples" / "kv.py"),
                              "--port", "0", "--backend", backend, *args],
                             cwd=CHILD_CWD, env=child_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        procs.append(p)
        line = p.stdout.readline()
        assert line.startswith("listening on "), line + p.stderr.read()
        host, port = line.split()[2].rsplit(":", 1)
        return p, host, int(port)

    yield start
    for p in procs:
        if p.poll() is None:
            p.terminate()
            assert p.wait(DEADLINE) == 0, p.stderr.read()
        p.stdout.close()
        p.stderr.close()


def rcli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, env=tool_env(),
                          timeout=DEADLINE, text=True, check=True).stdout


@needs_tree("examples")
def test_kv_redis_cli_and_benchmark(kv):
    need("redis-cli")
    need("redis-benchmark")
    _, _, port = kv()
    assert rcli(port, "set", "a", "1") == "OK\n"
    assert rcli(port, "incrby", "a", "41") == "42\n"
    assert rcli(port, "rpush", "L", "x", "y") == "2\n"
    assert rcli(port, "lrange", "L", "0", "-1") == "x\ny\n"
    assert rcli(port, "get", "missing") == "\n"
    assert "unknown command" in rcli(port, "nosuch")
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-q", "-n", "5000", "-P", "16", "-t",
         "ping,set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,lrange,mset"],
        capture_output=True, env=tool_env(), timeout=60, text=True)
    assert out.returncode == 0, out.stderr
    assert "error" not in out.stdout.lower() and "error" not in out.stderr.lower()
    # every INCR counted: redis-benchmark sends -n, plus up to a pipeline
    # per client to finish its last one (redis-server counts the same)
    assert 5000 <= int(rcli(port, "get", "counter:__rand_int__")) <= 5000 + 50 * 16
    assert rcli(port, "exists", "key:__rand_int__") == "1\n"


@needs_tree("examples")
def test_kv_redis_py(kv):
    redis = pytest.importorskip("redis")
    _, host, port = kv()
    for protocol in (2, 3):
        r = redis.Redis(host=host, port=port, protocol=protocol, socket_timeout=DEADLINE)
        try:
            assert r.ping() is True
            assert r.set("k", b"\x00\r\nv") is True
            assert r.get("k") == b"\x00\r\nv"
            assert r.set("k", "w", nx=True) is None
            p = r.pipeline()
            for i in range(100):
                p.incr("n")
            assert p.execute()[-1] == 100
            assert r.hset("h", mapping={"a": 1, "b": 2}) == 2
            assert r.mget("k", "none") == [b"\x00\r\nv", None]
            r.flushall()
        finally:
            r.close()

    async def main():
        ra = redis.asyncio.Redis(host=host, port=port)
        try:
            await ra.set("x", "1")
            got = await asyncio.gather(*(ra.incr("x") for _ in range(50)))
            assert sorted(got) == list(range(2, 52))
        finally:
            await ra.aclose()
    asyncio.run(main())


@needs_tree("examples")
def test_kv_aof_survives_sigkill(kv, tmp_path):
    """INCRs acknowledged with --fsync always, then SIGKILL mid-load: after
    a restart the counter is at least what was acknowledged, and a torn
    record at the file's end is cut."""
    aof = tmp_path / "kv.aof"
    proc, host, port = kv("--aof", str(aof), "--fsync", "always")
    acked = 0
    with socket.create_connection((host, port), timeout=DEADLINE) as s:
        for _ in range(30):
            s.sendall(cmd("INCR", "n") * 10)
            acked = read_replies(s, 10)[-1]
        s.sendall(cmd("INCR", "n") * 50)        # in flight at the kill
        proc.send_signal(signal.SIGKILL)
        proc.wait(DEADLINE)
    with open(aof, "ab") as f:
        f.write(b"*3\r\n$3\r\nSET\r\n$1\r\nq\r\n$5\r\nhal")   # a torn write
    proc2, host, port = kv("--aof", str(aof))
    with socket.create_connection((host, port), timeout=DEADLINE) as s:
        s.sendall(cmd("GET", "n") + cmd("EXISTS", "q"))
        n, q = read_replies(s, 2)
    assert acked == 300 and int(n) >= acked and q == 0


# ---- the client side: RESP(client=True) ----------------------------------------

@pytest.fixture
def resp_client(servers):
    """A started client-side server (RESP(client=True)) on the test's
    backend, its handler recording what no command waited for."""
    def make():
        unsolicited = []
        srv = servers(lambda conn, value: unsolicited.append(value),
                      framing=iocport.RESP(client=True))
        srv.start()
        srv.unsolicited = unsolicited
        return srv
    return make


class Replies:
    """callback(conn, reply) that records; wait(n) for n replies."""

    def __init__(self):
        self.got = []
        self.cond = threading.Condition()

    def __call__(self, conn, value):
        with self.cond:
            self.got.append(value)
            self.cond.notify_all()

    def wait(self, n):
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= n, DEADLINE), self.got
        return self.got


def test_client_against_redis_server(resp_client, redis_port):
    srv = resp_client()
    conn = srv.connect("127.0.0.1", redis_port)
    r = Replies()
    assert conn.command("SET", "client:k", b"\x00v", callback=r) is True
    conn.command(b"GET", "client:k", callback=r)
    conn.command("DEL", "client:n", callback=r)
    for _ in range(1000):                    # pipelined: no wait between
        conn.command("INCR", "client:n", callback=r)
    conn.command("LRANGE", "client:none", 0, -1, callback=r)
    conn.command("NOSUCHCOMMAND", callback=r)
    conn.command("HELLO", 3, callback=r)
    conn.command("HGETALL", "client:none", callback=r)
    got = r.wait(1007)
    assert got[:2] == [b"OK", b"\x00v"] and got[2] in (0, 1)   # (the module shares one redis)
    assert got[3:1003] == list(range(1, 1001))
    assert got[1003] == []
    assert isinstance(got[1004], resp.Error) and "unknown command" in got[1004].args[0]
    assert got[1005][b"proto"] == 3 and got[1006] == {}
    assert srv.unsolicited == []
    with pytest.raises(TypeError):
        conn.command("SET", "k", object())
    with pytest.raises(TypeError):
        conn.command()


def test_client_pushes_go_to_the_handler(resp_client, resp_server):
    def handler(conn, args):
        conn.send_raw(b">2\r\n$7\r\nmessage\r\n$2\r\nhi\r\n")   # before the reply
        conn.reply(args[0])
    peer = resp_server(handler)
    srv = resp_client()
    conn = srv.connect(*peer.addresses[0])
    r = Replies()
    conn.command("A", callback=r)
    conn.command("B", callback=r)
    assert r.wait(2) == [b"A", b"B"]
    wait_for(lambda: len(srv.unsolicited) == 2)
    assert srv.unsolicited == [[b"message", b"hi"]] * 2


def test_client_callbacks_hear_the_close(resp_client, resp_server):
    peer = resp_server(lambda conn, args: conn.close())   # no reply, closes
    srv = resp_client()
    conn = srv.connect(*peer.addresses[0])
    r = Replies()
    conn.command("X", callback=r)
    conn.command("Y", callback=r)
    got = r.wait(2)
    assert all(isinstance(g, ConnectionError) for g in got), got
    wait_for(lambda: conn.close_reason is not None)
    assert conn.command("Z", callback=r) is False


def test_client_command_async(resp_client, redis_port):
    srv = resp_client()

    async def main():
        conn = await srv.connect("127.0.0.1", redis_port)
        assert await conn.command_async("SET", "client:a", "1") == b"OK"
        got = await asyncio.gather(*(conn.command_async("INCR", "client:a")
                                     for _ in range(100)))
        with pytest.raises(resp.Error, match="unknown command"):
            await conn.command_async("NOSUCHCOMMAND")
        return got

    assert asyncio.run(main()) == list(range(2, 102))
