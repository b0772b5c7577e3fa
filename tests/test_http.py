"""HTTP/1.1 in the engine: HTTP() framing, iocport.Request, respond() and
respond_file(), the order of answers, native refusals, and real clients
nobody here wrote (curl, wrk, h2load) on both backends.  Answers are read
back with h11, a parser written independently of ours."""
import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import threading

import h11
import pytest

import iocport
from conftest import CHILD_CWD, DEADLINE, child_env, recv_until_eof, tool_env, wait_for

pytestmark = pytest.mark.timeout(60)

HELLO = b"hello, world"


def read_responses(sock, count, method=b"GET"):
    """Read `count` responses from a blocking socket with h11 (`method`:
    the requests' method, or a list of one per response); returns
    [(status, headers dict, body)]."""
    conn = h11.Connection(h11.CLIENT)
    methods = method if isinstance(method, list) else [method] * count
    out = []
    for m in methods:
        # h11 needs to have "sent" a request to expect each response
        conn.send(h11.Request(method=m, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        status, headers, body = None, None, bytearray()
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
                continue
            if isinstance(ev, h11.InformationalResponse):
                continue
            if isinstance(ev, h11.Response):
                status = ev.status_code
                headers = {k.lower(): v for k, v in ev.headers}
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
            elif isinstance(ev, h11.ConnectionClosed):
                raise AssertionError("closed before the response ended")
        out.append((status, headers, bytes(body)))
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            break
        conn.start_next_cycle()
    return out


def get(path, extra=b""):
    return b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n"


def answer_path(conn, req):
    """Answer with the path as the body (and the body, if any, after it)."""
    req.respond(200, [(b"content-type", b"text/plain")], req.path + req.body)


@pytest.fixture
def http_server(make_server):
    def make(handler=answer_path, **kw):
        kw.setdefault("framing", iocport.HTTP())
        return make_server(handler, **kw)
    return make


# ---- the basics -------------------------------------------------------------

def test_get_and_keep_alive(http_server, client):
    srv = http_server()
    s = client(srv.addresses[0])
    for i in range(3):
        s.sendall(get(b"/n%d" % i))
        [(status, headers, body)] = read_responses(s, 1)
        assert status == 200 and body == b"/n%d" % i
        assert headers[b"content-length"] == str(len(body)).encode()
        assert b"date" in headers and b"connection" not in headers


def test_request_object(http_server, client):
    seen = []

    def handler(conn, req):
        seen.append((req.method, req.target, req.path, req.query, req.version,
                     req.headers, req.header("X-ONE"), req.header(b"missing", 7),
                     req.body, req.keep_alive, req.conn is conn, repr(req)))
        req.respond(204)

    srv = http_server(handler)
    s = client(srv.addresses[0])
    s.sendall(b"POST /p/q?a=1&b HTTP/1.1\r\nHost: t\r\nX-One:  v1 \r\n"
              b"x-one: v2\r\nContent-Length: 3\r\n\r\nabc")
    [(status, headers, body)] = read_responses(s, 1, method=b"POST")
    assert status == 204 and body == b"" and b"content-length" not in headers
    assert seen == [(b"POST", b"/p/q?a=1&b", b"/p/q", b"a=1&b", b"HTTP/1.1",
                     ((b"Host", b"t"), (b"X-One", b"v1"), (b"x-one", b"v2"),
                      (b"Content-Length", b"3")),
                     b"v1", 7, b"abc", True, True,
                     "<iocport.Request b'POST' b'/p/q?a=1&b'>")]


def test_chunked_body_and_trailers(http_server, client):
    trailers = []

    def handler(conn, req):
        trailers.append(req.trailers)
        answer_path(conn, req)

    srv = http_server(handler)
    s = client(srv.addresses[0])
    s.sendall(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"3;ext=1\r\nabc\r\n10\r\n" + b"x" * 16 + b"\r\n0\r\nT-One: yes\r\n\r\n")
    [(status, _, body)] = read_responses(s, 1, method=b"POST")
    assert status == 200 and body == b"/cabc" + b"x" * 16
    assert trailers == [((b"T-One", b"yes"),)]


def test_head_has_length_but_no_body(http_server, client):
    srv = http_server(lambda conn, req: req.respond(200, (), HELLO))
    s = client(srv.addresses[0])
    s.sendall(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n" + get(b"/"))
    (st1, h1, b1), (st2, h2, b2) = read_responses(s, 2, method=[b"HEAD", b"GET"])
    assert (st1, h1[b"content-length"], b1) == (200, b"12", b"")
    assert (st2, b2) == (200, HELLO)


def test_http10(http_server, client):
    srv = http_server()
    s = client(srv.addresses[0])
    s.sendall(b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    [(status, headers, body)] = read_responses(s, 1)
    assert headers[b"connection"] == b"keep-alive" and body == b"/k"
    s.sendall(b"GET /c HTTP/1.0\r\n\r\n")
    data = recv_until_eof(s)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close\r\n" in data
    assert data.endswith(b"\r\n\r\n/c")


def test_connection_close_ends_the_connection(http_server, client):
    srv = http_server()
    s = client(srv.addresses[0])
    s.sendall(get(b"/1") + get(b"/2", b"Connection: close\r\n") + get(b"/3"))
    data = recv_until_eof(s)
    # two answers, the second says close, the third request was never handled
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert data.endswith(b"connection: close\r\n\r\n/2")
    wait_for(lambda: srv.stats()["closed"] == 1)
    assert srv.stats()["messages_in"] == 2


def test_handler_says_close(http_server, client):
    srv = http_server(lambda c, r: r.respond(200, [("Connection", "close")], b"x"))
    s = client(srv.addresses[0])
    s.sendall(get(b"/") + get(b"/"))
    data = recv_until_eof(s)
    assert data.count(b"HTTP/1.1") == 1 and data.endswith(b"\r\n\r\nx")


def test_request_cut_into_single_bytes(http_server, client):
    srv = http_server()
    s = client(srv.addresses[0])
    raw = (b"POST /slow HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\n\r\n" + get(b"/after"))
    for i in range(len(raw)):
        s.sendall(raw[i:i + 1])
    got = read_responses(s, 2)
    assert [b for _, _, b in got] == [b"/slowhello", b"/after"]


def test_large_body(http_server, client):
    body = os.urandom(900_000)
    srv = http_server(lambda c, r: r.respond(200, (), r.body[::-1]))
    s = client(srv.addresses[0])
    s.sendall(b"PUT /big HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
              + body)
    [(status, _, got)] = read_responses(s, 1, method=b"PUT")
    assert status == 200 and got == body[::-1]


def test_random_cuts_many_connections(http_server):
    """Requests of every shape, sent cut at random points over 40
    connections at once: every one answered, in order, whole."""
    rng = random.Random(1234)

    def request(i):
        body = os.urandom(rng.choice([0, 1, 100, 5000, 70000]))
        path = b"/r%d" % i
        if rng.random() < 0.5 and body:
            chunks, rest = [], body
            while rest:
                n = rng.randint(1, len(rest))
                chunks.append(b"%x\r\n%s\r\n" % (n, rest[:n]))
                rest = rest[n:]
            raw = (b"POST " + path + b" HTTP/1.1\r\nHost: t\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(chunks) + b"0\r\n\r\n")
        else:
            raw = (b"POST " + path + b" HTTP/1.1\r\nHost: t\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return raw, path + body

    srv = http_server()
    work = []
    for c in range(40):
        reqs = [request(c * 100 + i) for i in range(rng.randint(1, 8))]
        stream = b"".join(r for r, _ in reqs)
        cuts = sorted(rng.sample(range(1, len(stream)), min(5, len(stream) - 1)))
        pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
        work.append((pieces, [e for _, e in reqs]))
    errors = []

    def run(pieces, expected):
        try:
            with socket.create_connection(srv.addresses[0], timeout=DEADLINE) as s:
                for p in pieces:
                    s.sendall(p)
                got = read_responses(s, len(expected), method=b"POST")
                assert [b for _, _, b in got] == expected
        except Exception as exc:   # reported below, with the others
            errors.append(exc)

    ts = [threading.Thread(target=run, args=w) for w in work]
    for t in ts:
        t.start()
    for t in ts:
        t.join(DEADLINE)
    assert not any(t.is_alive() for t in ts)
    assert errors == []


# ---- the order of answers ---------------------------------------------------

def test_answers_leave_in_request_order(http_server, client, threads):
    """Later requests answered first, from other threads: the answers still
    leave in the order of the requests."""
    held = []
    all_in = threading.Event()

    def handler(conn, req):
        held.append(req)
        if len(held) == 8:
            all_in.set()

    def answer_backwards():
        assert all_in.wait(DEADLINE)
        for req in reversed(held[1:]):
            assert req.respond(200, (), req.path) is True
        held[0].conn.respond(200, (), held[0].path)   # the oldest still owed

    srv = http_server(handler)
    s = client(srv.addresses[0])
    threads(answer_backwards)
    s.sendall(b"".join(get(b"/%d" % i) for i in range(8)))
    got = read_responses(s, 8)
    assert [b for _, _, b in got] == [b"/%d" % i for i in range(8)]


def test_unanswered_request_is_answered_500(http_server, client, caplog):
    def handler(conn, req):
        if req.path == b"/drop":
            return            # dropped: answered 500 when it goes away
        if req.path == b"/raise":
            raise RuntimeError("boom")
        answer_path(conn, req)

    srv = http_server(handler)
    s = client(srv.addresses[0])
    s.sendall(get(b"/drop") + get(b"/ok"))
    got = read_responses(s, 2)
    assert [(st, b) for st, _, b in got] == [(500, b"internal server error\n"),
                                             (200, b"/ok")]
    s.sendall(get(b"/raise") + get(b"/never"))
    data = recv_until_eof(s)
    assert data.startswith(b"HTTP/1.1 500 ") and b"connection: close" in data
    assert data.count(b"HTTP/1.1") == 1
    wait_for(lambda: srv.stats()["errors"]["handler"] == 1)


def test_respond_arguments(http_server, client):
    results = {}
    done = threading.Event()

    def handler(conn, req):
        def attempt(name, fn):
            try:
                fn()
                results[name] = None
            except Exception as exc:
                results[name] = type(exc)
        attempt("status", lambda: req.respond(99))
        attempt("status_type", lambda: req.respond("200"))
        attempt("crlf", lambda: req.respond(200, [(b"x", b"a\r\nb: c")]))
        attempt("name", lambda: req.respond(200, [(b"bad name", b"v")]))
        attempt("length", lambda: req.respond(200, [(b"Content-Length", b"1")]))
        attempt("pair", lambda: req.respond(200, [b"x"]))
        attempt("body", lambda: req.respond(200, (), "text"))
        attempt("no_body", lambda: req.respond(304, (), b"x"))
        attempt("ok", lambda: req.respond(200, [("x-str", "v")], bytearray(b"y")))
        attempt("twice", lambda: req.respond(200))
        attempt("nothing_owed", lambda: conn.respond(200))
        done.set()

    srv = http_server(handler)
    s = client(srv.addresses[0])
    s.sendall(get(b"/"))
    [(status, headers, body)] = read_responses(s, 1)
    assert done.wait(DEADLINE)
    assert (status, headers[b"x-str"], body) == (200, b"v", b"y")
    assert results == {
        "status": ValueError, "status_type": TypeError, "crlf": ValueError,
        "name": ValueError, "length": ValueError, "pair": TypeError,
        "body": TypeError, "no_body": ValueError, "ok": None,
        "twice": RuntimeError, "nothing_owed": RuntimeError}


def test_async_handler(make_server, client):
    async def handler(conn, req):
        await asyncio.sleep(0.001 if req.path == b"/slow" else 0)
        req.respond(200, (), req.path)

    async def main():
        srv = iocport.Server(handler, framing=iocport.HTTP(),
                             handlers_per_connection=4)
        async with srv:
            address = srv.listen("127.0.0.1", 0)
            srv.start()
            loop = asyncio.get_running_loop()

            def talk():
                with socket.create_connection(address, timeout=DEADLINE) as s:
                    s.sendall(get(b"/slow") + get(b"/fast") + get(b"/x"))
                    return [b for _, _, b in read_responses(s, 3)]
            got = await loop.run_in_executor(None, talk)
            srv.stop()
            return got

    assert asyncio.run(main()) == [b"/slow", b"/fast", b"/x"]


# ---- refusals ---------------------------------------------------------------

REFUSED = [
    ("cl_and_te", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    # RFC 9112 section 6.3: chunked not last is a 400; an unknown coding
    # under it, a 501
    ("te_not_chunked", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    ("te_unknown", b"POST / HTTP/1.1\r\nHost: t\r\n"
                   b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501),
    ("chunked_not_last", b"POST / HTTP/1.1\r\nHost: t\r\n"
                         b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400),
    ("lengths_differ", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n"
                       b"Content-Length: 2\r\n\r\nab", 400),
    ("obs_fold", b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n", 400),
    ("ws_before_colon", b"GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400),
    ("bare_cr", b"GET / HTTP/1.1\r\nHost: t\rX: y\r\n\r\n", 400),
    ("bad_length", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n", 400),
    ("bad_chunk", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"zz\r\n", 400),
    ("no_host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("version", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    ("line_too_long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    ("field_too_long", b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"v" * 9000 + b"\r\n\r\n", 431),
    ("too_many_fields", b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
    ("body_too_large", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n", 413),
]


@pytest.mark.parametrize("name,raw,status", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_after_the_good_ones(http_server, client, caplog, name, raw, status):
    """Good requests, then a bad one in the same write: the good ones are
    answered, then the refusal (with connection: close), then the close."""
    srv = http_server()
    s = client(srv.addresses[0])
    s.sendall(get(b"/a") + get(b"/b") + raw)
    data = recv_until_eof(s)
    a, b, refusal = data.split(b"HTTP/1.1 ", 3)[1:]
    assert a.startswith(b"200 ") and a.endswith(b"/a")
    assert b.startswith(b"200 ") and b.endswith(b"/b")
    assert refusal.startswith(b"%d " % status)
    assert b"\r\nconnection: close\r\n" in refusal
    wait_for(lambda: srv.stats()["errors"]["http"] == 1)
    assert f"HTTP request refused on connection" in caplog.text


def test_refusals_logged_once_per_kind(http_server, client, caplog):
    srv = http_server()
    for _ in range(3):
        s = client(srv.addresses[0])
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")   # no Host
        assert recv_until_eof(s).startswith(b"HTTP/1.1 400 ")
    wait_for(lambda: srv.stats()["errors"]["http"] == 3)
    assert caplog.text.count("HTTP request refused") == 1


def test_expect_100_continue(http_server, client):
    srv = http_server()
    s = client(srv.addresses[0])
    s.sendall(b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
              b"Content-Length: 4\r\n\r\n")
    interim = s.recv(64)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    s.sendall(b"body")
    [(status, _, body)] = read_responses(s, 1, method=b"POST")
    assert (status, body) == (200, b"/ebody")


# ---- what does not apply ------------------------------------------------------

def test_misuse_is_refused(backend):
    with pytest.raises(ValueError, match="max_body"):
        iocport.Server(answer_path, framing=iocport.HTTP(), max_message=10,
                       backend=backend)
    with pytest.raises(ValueError, match="Framer"):
        iocport.Framer(iocport.HTTP())
    with pytest.raises(ValueError, match="max_headers"):
        iocport.HTTP(max_headers=0)
    with pytest.raises(TypeError):
        iocport.HTTP(max_body="1")
    assert iocport.HTTP(max_body=5) == iocport.HTTP(max_body=5)
    assert repr(iocport.HTTP(max_body=5)) == "HTTP(max_body=5)"
    srv = iocport.Server(answer_path, framing=iocport.HTTP(), backend=backend)
    try:
        srv.start()
        with pytest.raises(ValueError, match="outgoing"):
            srv.connect("127.0.0.1", 1)
    finally:
        srv.stop()


# ---- files ------------------------------------------------------------------

def test_respond_file_in_order(http_server, client, tmp_path):
    data = os.urandom(300_000)
    (tmp_path / "f").write_bytes(data)
    files = []

    def handler(conn, req):
        if req.path == b"/file":
            f = srv.open_file(str(tmp_path / "f"))
            files.append(f)
            req.respond_file(f, 200, offset=5, count=len(data) - 10,
                             callback=lambda n, err: f.close())
        else:
            answer_path(conn, req)

    srv = http_server(handler)
    s = client(srv.addresses[0])
    s.sendall(get(b"/file") + get(b"/between") + get(b"/file") +
              b"HEAD /file HTTP/1.1\r\nHost: t\r\n\r\n")
    got = read_responses(s, 4, method=[b"GET"] * 3 + [b"HEAD"])
    assert [b for _, _, b in got[:3]] == [data[5:-5], b"/between", data[5:-5]]
    [(status, headers, body)] = got[3:]
    assert headers[b"content-length"] == str(len(data) - 10).encode() and body == b""
    wait_for(lambda: len(files) == 3 and all(f.closed for f in files))


# ---- real clients -------------------------------------------------------------

def need(tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (.ci/run installs it)")


def test_curl(http_server, tmp_path):
    need("curl")
    srv = http_server()
    url = "http://%s:%d" % srv.addresses[0]
    out = subprocess.run(["curl", "-sS", "--max-time", "20", url + "/one", url + "/two"],
                         capture_output=True, env=tool_env(), timeout=DEADLINE, check=True)
    assert out.stdout == b"/one/two"
    assert srv.stats()["accepted"] == 1   # one connection, kept alive
    body = os.urandom(200_000)
    (tmp_path / "up").write_bytes(body)
    out = subprocess.run(["curl", "-sS", "--max-time", "20", "-H",
                          "Transfer-Encoding: chunked", "--data-binary",
                          "@" + str(tmp_path / "up"), url + "/up"],
                         capture_output=True, env=tool_env(), timeout=DEADLINE, check=True)
    assert out.stdout == b"/up" + body
    # Expect: 100-continue: curl would wait 30 s without the interim answer
    out = subprocess.run(["curl", "-sS", "--max-time", "20", "--expect100-timeout",
                          "30", "-H", "Expect: 100-continue", "--data-binary",
                          "@" + str(tmp_path / "up"), url + "/x"],
                         capture_output=True, env=tool_env(), timeout=15, check=True)
    assert out.stdout == b"/x" + body
    out = subprocess.run(["curl", "-sS", "-I", "--max-time", "20", url + "/h"],
                         capture_output=True, env=tool_env(), timeout=DEADLINE, check=True)
    assert out.stdout.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 2\r\n" in out.stdout


@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
def test_h2load_pipelined_and_wrk(http_server, native):
    need("h2load")
    srv = http_server(None if native else
                      (lambda c, r: r.respond(200, (), HELLO)),
                      native_echo=native)
    url = "http://%s:%d/" % srv.addresses[0]
    out = subprocess.run(["h2load", "--h1", "-n", "20000", "-c", "20", "-m", "16",
                          url], capture_output=True, env=tool_env(), timeout=DEADLINE, text=True)
    assert "20000 succeeded, 0 failed, 0 errored, 0 timeout" in out.stdout, out.stdout
    assert "20000 2xx" in out.stdout
    if shutil.which("wrk") is not None:
        out = subprocess.run(["wrk", "-t1", "-c20", "-d1s", url],
                             capture_output=True, env=tool_env(), timeout=DEADLINE, text=True)
        assert "Non-2xx" not in out.stdout and "Socket errors" not in out.stdout, out.stdout
        assert " requests in " in out.stdout


# ---- python -m iocport http ---------------------------------------------------

@pytest.fixture
def http_cli(backend):
    procs = []

    def start(*args):
        p = subprocess.Popen([sys.executable, "-m", "iocport", "http", "--port", "0",
                              "--backend", backend, *args], cwd=CHILD_CWD,
                             env=child_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        procs.append(p)
        line = p.stdout.readline()
        assert line.startswith("listening on "), line + p.stderr.read()
        host, port = line.split()[2].rsplit(":", 1)
        return p, "http://%s:%s" % (host, port)

    yield start
    for p in procs:
        p.terminate()
        assert p.wait(DEADLINE) == 0
        p.stdout.close()
        p.stderr.close()


def curl(*args):
    return subprocess.run(["curl", "-sS", "--max-time", "30", *args],
                          capture_output=True, env=tool_env(), timeout=DEADLINE, check=True).stdout


def test_cli_hello(http_cli):
    need("curl")
    for extra in ((), ("--native",)):
        _, url = http_cli(*extra)
        assert curl(url + "/anything") == HELLO
        assert curl(url + "/hello") == HELLO


def test_cli_static_files(http_cli, tmp_path):
    need("curl")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    data = os.urandom(50_000)
    (root / "sub" / "blob.bin").write_bytes(data)
    (root / "index.html").write_bytes(b"<p>index</p>")
    (tmp_path / "secret").write_bytes(b"no")
    with open(root / "sparse", "wb") as f:
        f.truncate(1 << 30)
    proc, url = http_cli("--root", str(root))
    assert curl(url + "/") == b"<p>index</p>"
    assert curl(url + "/hello") == HELLO
    assert curl(url + "/sub/blob.bin") == data
    assert curl("-r", "10-19", url + "/sub/blob.bin") == data[10:20]
    assert curl("-r", "-7", url + "/sub/blob.bin") == data[-7:]
    status = lambda *a: curl("-o", "/dev/null", "-w", "%{http_code}", *a)
    assert status(url + "/missing") == b"404"
    assert status("--path-as-is", url + "/../secret") == b"403"
    assert status("-r", "60000-", url + "/sub/blob.bin") == b"416"
    assert status("-X", "POST", url + "/") == b"405"
    head = curl("-I", url + "/sparse")
    assert b"content-length: 1073741824\r\n" in head
    # 1 GiB streamed with send_file: the server's memory stays bounded
    def peak_kib():
        for line in open(f"/proc/{proc.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    before = peak_kib()
    got = subprocess.run(["curl", "-sS", "--max-time", "50", "-o", "/dev/null", "-w",
                          "%{size_download}", url + "/sparse"],
                         capture_output=True, env=tool_env(), timeout=55, check=True).stdout
    assert got == b"1073741824"
    assert peak_kib() - before < 64 * 1024, "serving 1 GiB grew the server by 64 MiB+"


# ---- streamed answers -------------------------------------------------------

def test_streamed_answers_keep_their_order(http_server, client, threads):
    """A chunked answer written from another thread over time, and the
    answers after it (one of them streamed early, with a length): all
    leave whole, in request order."""
    held = {}
    ready = threading.Event()

    def handler(conn, req):
        held[req.path] = req
        if len(held) == 3:
            ready.set()

    def work():
        assert ready.wait(DEADLINE)
        second, third, first = held[b"/2"], held[b"/3"], held[b"/1"]
        assert second.respond_start(200, [(b"x-s", b"2")], length=6) is True
        second.write(b"abc")
        third.respond(200, (), b"third")
        first.respond_start(200)
        for part in (b"one ", b"", b"two ", b"three"):
            first.write(part)
        second.write(b"def")
        second.end()
        first.end()

    srv = http_server(handler)
    s = client(srv.addresses[0])
    threads(work)
    s.sendall(get(b"/1") + get(b"/2") + get(b"/3"))
    got = read_responses(s, 3)
    assert [b for _, _, b in got] == [b"one two three", b"abcdef", b"third"]
    assert got[0][1][b"transfer-encoding"] == b"chunked"
    assert got[1][1][b"content-length"] == b"6"


def test_stream_misuse(http_server, client):
    errors = {}

    def handler(conn, req):
        def attempt(name, fn):
            try:
                fn()
            except Exception as exc:
                errors[name] = type(exc)
        attempt("write_first", lambda: req.write(b"x"))
        req.respond_start(200, length=3)
        attempt("respond_twice", lambda: req.respond(200))
        attempt("past_length", lambda: req.write(b"abcd"))
        req.write(b"ab")
        attempt("short", lambda: req.end())
        req.write(b"c")
        req.end()
        attempt("after_end", lambda: req.write(b"x"))

    srv = http_server(handler)
    s = client(srv.addresses[0])
    s.sendall(get(b"/"))
    [(status, _, body)] = read_responses(s, 1)
    assert (status, body) == (200, b"abc")
    assert errors == {"write_first": RuntimeError, "respond_twice": RuntimeError,
                      "past_length": ValueError, "short": ValueError,
                      "after_end": RuntimeError}


def test_stream_http10_and_head(http_server, client):
    def handler(conn, req):
        req.respond_start(200)
        req.write(b"streamed")
        req.end()

    srv = http_server(handler)
    s = client(srv.addresses[0])
    s.sendall(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
    [(status, headers, body)] = read_responses(s, 1, method=b"HEAD")
    assert body == b"" and headers[b"transfer-encoding"] == b"chunked"
    s2 = client(srv.addresses[0])
    s2.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    data = recv_until_eof(s2)   # no chunked in HTTP/1.0: the close ends it
    assert b"transfer-encoding" not in data and b"content-length" not in data
    assert b"connection: close\r\n" in data and data.endswith(b"\r\n\r\nstreamed")


def test_stream_dropped_unended_aborts(http_server, client):
    def handler(conn, req):
        req.respond_start(200)
        req.write(b"partial")
        # the request goes away with its body unended

    srv = http_server(handler)
    s = client(srv.addresses[0])
    s.sendall(get(b"/"))
    data = b""
    try:
        data = recv_until_eof(s)
    except ConnectionResetError:
        pass
    assert not data.endswith(b"0\r\n\r\n")   # never looks complete


def test_header_timeout(http_server, client):
    """A header section not whole within header_timeout of the request's
    first byte gets 408 and the close; a body may take longer; so may the
    quiet between keep-alive requests."""
    srv = http_server(framing=iocport.HTTP(header_timeout=0.3))
    slow_body = client(srv.addresses[0])
    slow_body.sendall(b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nx")
    idle = client(srv.addresses[0])
    idle.sendall(get(b"/first"))
    assert read_responses(idle, 1)[0][2] == b"/first"
    stuck = client(srv.addresses[0])
    stuck.sendall(b"GET /stuck HTTP/1.1\r\nHost: t\r\n")   # never ends
    data = recv_until_eof(stuck)                           # the 408, then EOF
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"connection: close\r\n" in data
    slow_body.sendall(b"y")                                # past 0.3 s: fine
    assert read_responses(slow_body, 1, method=b"POST")[0][2] == b"/bxy"
    idle.sendall(get(b"/second"))
    assert read_responses(idle, 1)[0][2] == b"/second"
    assert srv.stats()["errors"]["http"] == 1
    with pytest.raises(ValueError):
        iocport.HTTP(header_timeout=0)
    assert iocport.HTTP(header_timeout=None).header_timeout is None
