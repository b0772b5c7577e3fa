"""Unix stream sockets: Server.listen_unix() and connect_unix(), on both
backends, against the socket module, iocport itself and socat (a peer
nobody here wrote, when it is installed)."""
import asyncio
import errno
import os
import shutil
import socket
import stat
import subprocess
import threading
import uuid

import pytest

import iocport
from conftest import DEADLINE, Codec, recv_messages, recv_until_eof, wait_for

pytestmark = pytest.mark.timeout(60)
CODEC = iocport.LengthPrefixed(4)


@pytest.fixture
def unix_client():
    """unix_client(address, bind=None) -> a connected blocking AF_UNIX
    socket with a timeout; all are closed at teardown."""
    made = []

    def connect(address, bind=None):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        made.append(s)
        s.settimeout(DEADLINE)
        if bind is not None:
            s.bind(bind)
        s.connect(address)
        return s

    yield connect
    for s in made:
        s.close()


def echo(conn, msg):
    conn.send(msg)


def round_trip(sock, payload):
    """Send one LengthPrefixed(4) message; return the one reply."""
    codec = Codec(CODEC)
    sock.sendall(codec.encode(payload))
    return recv_messages(sock, codec, 1)[0]


def abstract_name():
    return f"\0iocport-test-{os.getpid()}-{uuid.uuid4().hex}"


def dead_socket_file(path):
    """A socket file nothing listens on: what a killed server leaves."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


def test_echo_on_a_path(servers, unix_client, tmp_path):
    peers = []

    def handler(conn, msg):
        peers.append(conn.peer)
        conn.send(msg.upper())

    srv = servers(handler)
    path = str(tmp_path / "echo.sock")
    assert srv.listen_unix(path) == path
    assert srv.addresses == [path] and srv.address == path
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    srv.start()
    s = unix_client(path)
    codec = Codec(CODEC)
    msgs = [b"hello", b"", b"x" * 100_000]
    s.sendall(b"".join(codec.encode(m) for m in msgs))
    assert recv_messages(s, codec, 3) == [m.upper() for m in msgs]
    assert peers == [None] * 3          # the client's socket is unbound
    assert srv.stats()["accepted"] == 1


def test_peer_is_the_bound_path(servers, unix_client, tmp_path):
    peers = []
    srv = servers(lambda conn, msg: (peers.append(conn.peer), conn.send(msg)))
    path = srv.listen_unix(tmp_path / "srv.sock")   # a path-like
    assert path == str(tmp_path / "srv.sock")
    srv.start()
    me = str(tmp_path / "client.sock")
    s = unix_client(path, bind=me)
    assert round_trip(s, b"who") == b"who"
    assert peers == [me]


def test_many_connections_iocport_to_iocport(servers, tmp_path):
    srv = servers(lambda conn, msg: conn.send(msg[::-1]))
    path = srv.listen_unix(str(tmp_path / "many.sock"))
    srv.start()
    nconns, per_conn = 60, 30
    lock = threading.Lock()
    got, results, peers = {}, [], []
    done = threading.Event()

    def on_message(conn, msg):
        with lock:
            got.setdefault(conn.id, []).append(msg)
            if sum(map(len, got.values())) == nconns * per_conn:
                done.set()

    def on_connected(conn, err):
        with lock:
            results.append(err)
            peers.append(conn.peer)

    cli = servers(on_message).start()
    sent = {}
    for i in range(nconns):
        conn = cli.connect_unix(path, on_connected)
        msgs = [f"{i}:{k}".encode() * (k + 1) for k in range(per_conn)]
        sent[conn.id] = msgs
        for m in msgs:                  # before it is connected: queued
            assert conn.send(m) is True
    assert done.wait(DEADLINE), sum(map(len, got.values()))
    assert got == {cid: [m[::-1] for m in msgs] for cid, msgs in sent.items()}
    assert results == [None] * nconns
    assert peers == [path] * nconns
    assert srv.stats()["accepted"] == nconns


def test_half_close_replies_still_arrive(servers, unix_client, tmp_path):
    srv = servers(lambda conn, msg: conn.send(msg + b"!"))
    path = srv.listen_unix(str(tmp_path / "half.sock"))
    srv.start()
    s = unix_client(path)
    codec = Codec(CODEC)
    msgs = [b"m%d" % i for i in range(200)]
    s.sendall(b"".join(codec.encode(m) for m in msgs))
    s.shutdown(socket.SHUT_WR)
    data = recv_until_eof(s)           # every reply, then the server's FIN
    assert codec.feed(data) == [m + b"!" for m in msgs]
    assert not codec.buf


def test_abstract_name(servers, unix_client):
    name = abstract_name()
    srv = servers(echo)
    assert srv.listen_unix(name) == name
    srv.start()
    s = unix_client(name)
    assert round_trip(s, b"abstract") == b"abstract"
    # and iocport connecting to it: the peer is the name, NUL first
    result = []
    ready = threading.Event()
    cli = servers(lambda conn, msg: (result.append(msg), ready.set())).start()
    conn = cli.connect_unix(name.encode())
    conn.send(b"again")
    assert ready.wait(DEADLINE)
    assert result == [b"again"] and conn.peer == name
    srv.stop()                          # nothing to remove, nothing raised
    with pytest.raises(ValueError, match="abstract"):
        servers(echo).listen_unix(abstract_name(), mode=0o600)


def test_abstract_name_in_use(servers):
    name = abstract_name()
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        holder.bind(name)
        with pytest.raises(OSError) as exc:
            servers(echo).listen_unix(name)
        assert exc.value.errno == errno.EADDRINUSE
    finally:
        holder.close()


def test_mode_and_file_removed_at_stop(servers, unix_client, tmp_path):
    srv = servers(echo)
    path = srv.listen_unix(str(tmp_path / "m.sock"), mode=0o600)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    srv.start()
    unix_client(path)
    srv.stop()
    assert not os.path.lexists(path)
    srv.stop()                          # idempotent


def test_file_removed_by_stop_before_start(servers, tmp_path):
    srv = servers(echo)
    path = srv.listen_unix(str(tmp_path / "never.sock"))
    srv.stop()
    assert not os.path.lexists(path)


def test_stop_leaves_a_replaced_file(servers, tmp_path):
    srv = servers(echo)
    path = srv.listen_unix(str(tmp_path / "r.sock"))
    srv.start()
    os.unlink(path)
    dead_socket_file(path)              # someone else's now
    srv.stop()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_stale_socket_file_is_replaced(servers, unix_client, tmp_path):
    path = str(tmp_path / "stale.sock")
    dead_socket_file(path)
    srv = servers(echo)
    assert srv.listen_unix(path) == path
    srv.start()
    s = unix_client(path)
    assert round_trip(s, b"fresh") == b"fresh"


def test_live_socket_is_refused(servers, tmp_path):
    path = str(tmp_path / "live.sock")
    first = servers(echo)
    first.listen_unix(path)
    first.start()
    inode = os.lstat(path).st_ino
    with pytest.raises(OSError, match="a server listens on it") as exc:
        servers(echo).listen_unix(path)
    assert exc.value.errno == errno.EADDRINUSE
    assert os.lstat(path).st_ino == inode   # left alone


def test_a_file_that_is_not_a_socket_is_kept(servers, tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes(b"precious")
    with pytest.raises(OSError, match="not a socket") as exc:
        servers(echo).listen_unix(str(path))
    assert exc.value.errno == errno.EADDRINUSE
    assert path.read_bytes() == b"precious"


def test_bad_arguments(servers, tmp_path):
    srv = servers(echo)
    with pytest.raises(TypeError, match="path must be"):
        srv.listen_unix(42)
    with pytest.raises(ValueError, match="empty"):
        srv.listen_unix("")
    with pytest.raises(ValueError, match="no NUL"):
        srv.listen_unix(str(tmp_path / "a\0b"))
    with pytest.raises(ValueError, match="at most 107 bytes"):
        srv.listen_unix("/" + "x" * 107)
    with pytest.raises(TypeError, match="mode must be an int"):
        srv.listen_unix(str(tmp_path / "s"), mode="0600")
    with pytest.raises(ValueError, match="mode must be between"):
        srv.listen_unix(str(tmp_path / "s"), mode=0o10000)
    assert not os.path.lexists(tmp_path / "s")
    srv.start()
    with pytest.raises(ValueError, match="at most 107 bytes"):
        srv.connect_unix("/" + "x" * 107)
    with pytest.raises(TypeError, match="callback must be callable"):
        srv.connect_unix(str(tmp_path / "s"), 5)
    with pytest.raises(ValueError, match="server_hostname is only"):
        srv.connect_unix(str(tmp_path / "s"), server_hostname="x")


@pytest.mark.parametrize("case", ["missing", "refused"])
def test_connect_failure_reaches_callback_and_await(servers, tmp_path, case):
    path = str(tmp_path / "gone.sock")
    if case == "refused":
        dead_socket_file(path)
    expected = FileNotFoundError if case == "missing" else ConnectionRefusedError
    cli = servers(echo)
    cli.start()
    errors = []
    called = threading.Event()
    conn = cli.connect_unix(path, lambda conn, err: (errors.append(err),
                                                     called.set()))
    assert called.wait(DEADLINE)
    assert isinstance(errors[0], expected) and conn.close_reason == "connect"

    async def main():
        with pytest.raises(expected):
            await cli.connect_unix(path)
    asyncio.run(asyncio.wait_for(main(), DEADLINE))


def test_tls_over_a_unix_socket(servers, tmp_path):
    trustme = pytest.importorskip("trustme")
    import ssl
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("app.internal").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    srv = servers(lambda conn, msg: conn.send(msg * 2), ssl=server_ctx)
    path = srv.listen_unix(str(tmp_path / "tls.sock"))
    srv.start()
    got = []
    ready = threading.Event()
    cli = servers(lambda conn, msg: (got.append(msg), ready.set())).start()
    with pytest.raises(ValueError, match="server_hostname"):
        cli.connect_unix(path, ssl=client_ctx)
    conn = cli.connect_unix(path, ssl=client_ctx, server_hostname="app.internal")
    conn.send(b"sealed")
    assert ready.wait(DEADLINE)
    assert got == [b"sealedsealed"] and conn.tls_version.startswith("TLS")
    # A wrong name fails the handshake: the callback hears of it.
    errors = []
    failed = threading.Event()
    cli.connect_unix(path, lambda c, e: (errors.append(e), failed.set()),
                     ssl=client_ctx, server_hostname="other.internal")
    assert failed.wait(DEADLINE)
    assert isinstance(errors[0], ssl.SSLCertVerificationError)


socat = pytest.mark.skipif(shutil.which("socat") is None,
                           reason="socat is not installed")


@socat
def test_socat_client(servers, tmp_path):
    srv = servers(lambda conn, msg: conn.send(msg.upper()),
                  framing=iocport.Delimited(b"\n"))
    path = srv.listen_unix(str(tmp_path / "socat.sock"))
    srv.start()
    lines = b"".join(b"line %d\n" % i for i in range(100))
    # -t: after its stdin ends (a half-close), socat waits this long for
    # the replies and the server's FIN.
    out = subprocess.run(["socat", "-t", str(DEADLINE), "-", f"UNIX-CONNECT:{path}"],
                         input=lines, capture_output=True, timeout=DEADLINE * 2,
                         check=True)
    assert out.stdout == lines.upper()


@socat
def test_socat_server(servers, tmp_path):
    path = str(tmp_path / "socat-echo.sock")
    peer = subprocess.Popen(["socat", f"UNIX-LISTEN:{path},fork", "PIPE"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def listening():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                return probe.connect_ex(path) == 0
            finally:
                probe.close()
        wait_for(listening, what="socat listening")
        got = []
        ready = threading.Event()

        def on_message(conn, msg):
            got.append(msg)
            if len(got) == 50:
                ready.set()

        cli = servers(on_message, framing=iocport.Delimited(b"\n")).start()
        conn = cli.connect_unix(path)
        for i in range(50):
            conn.send(b"ping %d" % i)
        assert ready.wait(DEADLINE)
        assert got == [b"ping %d" % i for i in range(50)]
        assert conn.peer == path
    finally:
        peer.kill()
        peer.wait(DEADLINE)
        peer.stderr.close()
