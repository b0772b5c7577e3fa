"""RESP: the native framer and encoder (src/lib/resp.c) through their test
hook, iocport._iocport.RESPParser.  Commands as a Redis server frames them
(with its exact protocol errors), replies as a client does (RESP2 and
RESP3), replies encoded as Redis does; judged against redis-py's own
parsers and, when it is installed, hiredis."""
import math
import random
import socket

import pytest

from iocport._iocport import Error, RESPError, RESPParser, RESPProtocolError

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024


def feed_all(parser, data, cuts=()):
    """Feed data cut at the given offsets; everything framed, in order."""
    out, pos = [], 0
    for c in cuts:
        out += parser.feed(data[pos:c])
        pos = c
    return out + parser.feed(data[pos:])


def frame(data, **kw):
    return feed_all(RESPParser(**kw), data)


def each_cut(data, want, **kw):
    """Every single cut, and byte by byte, frames the same."""
    for i in range(len(data) + 1):
        assert feed_all(RESPParser(**kw), data, [i]) == want, i
    assert feed_all(RESPParser(**kw), data, range(len(data))) == want


def protocol_error(data, **kw):
    with pytest.raises(RESPProtocolError) as ei:
        frame(data, **kw)
    return ei.value


# ---- commands --------------------------------------------------------------------------

COMMANDS = [
    (b"*1\r\n$4\r\nPING\r\n", [[b"PING"]]),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n",
     [[b"SET", b"k", b"hello"]]),
    (b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n", [[b"GET", b""]]),
    (b"*1\r\n$4\r\na\r\nb\r\n", [[b"a\r\nb"]]),                # binary safe
    (b"*1\r\n$3\r\n\x00\xff\n\r\n", [[b"\x00\xff\n"]]),
    (b"*0\r\n*-1\r\n*-5\r\n", []),                      # empty: ignored
    (b"PING\r\n", [[b"PING"]]),
    (b"PING\n", [[b"PING"]]),                               # LF alone
    (b"set  k \t v\r\n", [[b"set", b"k", b"v"]]),
    (b"\r\n\n   \r\n", []),                             # empty lines
    (b'SET k "a b"\r\n', [[b"SET", b"k", b"a b"]]),
    (b"SET k 'a b'\r\n", [[b"SET", b"k", b"a b"]]),
    (b'SET k "\\x41\\n\\r\\t\\b\\a\\"\\\\q"\r\n',
     [[b"SET", b"k", b"A\n\r\t\b\a\"\\q"]]),
    (b"SET k 'it\\'s'\r\n", [[b"SET", b"k", b"it's"]]),
    (b'SET k a"b c"\r\n', [[b"SET", b"k", b"ab c"]]),     # as sdssplitargs
    (b'SET k ""\r\n', [[b"SET", b"k", b""]]),
    (b"a\x0bb\r\n", [[b"a\x0bb"]]),                       # \v inside a word
    # pipelined: both kinds in one buffer
    (b"*1\r\n$4\r\nPING\r\nECHO x\r\n*2\r\n$4\r\nECHO\r\n$1\r\ny\r\n",
     [[b"PING"], [b"ECHO", b"x"], [b"ECHO", b"y"]]),
]


@pytest.mark.parametrize("data, want", COMMANDS)
def test_commands(data, want):
    assert frame(data) == want


def test_commands_cut_at_every_byte():
    data = b"".join(d for d, _ in COMMANDS)
    want = [c for _, w in COMMANDS for c in w]
    each_cut(data, want)


def test_many_arguments_grow_the_span_array():
    args = [str(i).encode() for i in range(1000)]
    data = b"*1000\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    assert frame(data) == [args]
    assert frame(b" ".join(args) + b"\r\n") == [args]


def test_pending_counts_the_partial_command():
    p = RESPParser()
    assert p.feed(b"*2\r\n$3\r\nGET\r\n$1") == []
    assert p.pending == 15
    assert p.feed(b"\r\nk\r\n") == [[b"GET", b"k"]]
    assert p.pending == 0


# (input, Redis's reply to it): src/networking.c, processInlineBuffer and
# processMultibulkBuffer.
BAD_COMMANDS = [
    (b"*x\r\n", "ERR Protocol error: invalid multibulk length"),
    (b"*\r\n", "ERR Protocol error: invalid multibulk length"),
    (b"*01\r\n", "ERR Protocol error: invalid multibulk length"),
    (b"*+1\r\n", "ERR Protocol error: invalid multibulk length"),
    (b"* 1\r\n", "ERR Protocol error: invalid multibulk length"),
    (b"*1048577\r\n", "ERR Protocol error: invalid multibulk length"),
    (b"*99999999999999999999\r\n",
     "ERR Protocol error: invalid multibulk length"),
    (b"*1\r\n$-1\r\n", "ERR Protocol error: invalid bulk length"),
    (b"*1\r\n$abc\r\n", "ERR Protocol error: invalid bulk length"),
    (b"*1\r\n$\r\n", "ERR Protocol error: invalid bulk length"),
    (b"*1\r\n$536870913\r\n", "ERR Protocol error: invalid bulk length"),
    (b"*1\r\n:1\r\n", "ERR Protocol error: expected '$', got ':'"),
    (b"*2\r\n$1\r\na\r\nfoo\r\n", "ERR Protocol error: expected '$', got 'f'"),
    (b"*1\r\n\r\n", "ERR Protocol error: expected '$', got ' '"),
    (b'SET k "abc\r\n', "ERR Protocol error: unbalanced quotes in request"),
    (b"SET k 'abc\r\n", "ERR Protocol error: unbalanced quotes in request"),
    (b'SET k "a"b\r\n', "ERR Protocol error: unbalanced quotes in request"),
    (b'SET k "a\\"\r\n', "ERR Protocol error: unbalanced quotes in request"),
]


@pytest.mark.parametrize("data, text", BAD_COMMANDS)
def test_bad_commands(data, text):
    e = protocol_error(data)
    assert str(e) == text
    assert e.reply == b"-" + text.encode() + b"\r\n"
    assert isinstance(e, ValueError) and isinstance(e, Error)


def test_bad_command_after_good_ones_and_sticky():
    p = RESPParser()
    with pytest.raises(RESPProtocolError) as ei:
        p.feed(b"PING\r\n*1\r\n$4\r\nECHO\r\n*x\r\n*1\r\n$4\r\nPING\r\n")
    assert ei.value.messages == [[b"PING"], [b"ECHO"]]
    with pytest.raises(RESPProtocolError, match="invalid multibulk") as ei:
        p.feed(b"PING\r\n")
    assert ei.value.messages == []


def test_bad_commands_whatever_the_cuts():
    for data, text in BAD_COMMANDS:
        for i in range(len(data) + 1):
            with pytest.raises(RESPProtocolError) as ei:
                feed_all(RESPParser(), data, [i])
            assert str(ei.value) == text, (data, i)


def test_limits_defaults_are_redis():
    p = RESPParser()
    assert frame(b"*1048576\r\n") == []       # accepted; args still due
    assert str(protocol_error(b"*1048577\r\n")).endswith("multibulk length")
    assert frame(b"*1\r\n$536870912\r\n") == []
    text = "ERR Protocol error: too big inline request"
    assert str(protocol_error(b"x" * (64 * 1024 + 2))) == text
    assert p.feed(b"x" * (64 * 1024) + b"\r") == []
    assert p.feed(b"\n") == [[b"x" * (64 * 1024)]]


def test_limits_configured_low():
    assert frame(b"*1\r\n$4\r\nabcd\r\n", max_bulk=4) == [[b"abcd"]]
    assert str(protocol_error(b"*1\r\n$5\r\n", max_bulk=4)) == \
        "ERR Protocol error: invalid bulk length"
    assert frame(b"*3\r\n", max_args=3) == []
    assert str(protocol_error(b"*4\r\n", max_args=3)) == \
        "ERR Protocol error: invalid multibulk length"
    assert frame(b"abcdefgh\r\n", max_inline=8) == [[b"abcdefgh"]]
    for data in [b"abcdefghi\r\n", b"abcdefghij", b"abcdefghi\n"]:
        assert str(protocol_error(data, max_inline=8)) == \
            "ERR Protocol error: too big inline request"
    assert str(protocol_error(b"*" + b"1" * 9, max_inline=8)) == \
        "ERR Protocol error: too big mbulk count string"
    assert str(protocol_error(b"*1" + b"1" * 8 + b"\r\n", max_inline=8)) == \
        "ERR Protocol error: too big mbulk count string"
    assert str(protocol_error(b"*1\r\n$" + b"1" * 9, max_inline=8)) == \
        "ERR Protocol error: too big bulk count string"


@pytest.mark.parametrize("kw", [
    {"max_bulk": 0}, {"max_args": 0}, {"max_args": 2 ** 31},
    {"max_inline": 0}, {"max_depth": 0}, {"max_depth": 65}])
def test_limits_out_of_range(kw):
    with pytest.raises(ValueError):
        RESPParser(**kw)


@pytest.mark.parametrize("args", [(1,), ("x",)])
def test_wrong_arguments(args):
    with pytest.raises(TypeError):
        RESPParser(*args)
    with pytest.raises(TypeError):
        RESPParser().feed("text")


# ---- replies ----------------------------------------------------------------------------

REPLIES = [
    (b"+OK\r\n", b"OK"),
    (b"+a\rb\r\n", b"a\rb"),                     # a lone CR is content
    (b"-ERR no such key\r\n", RESPError("ERR no such key")),
    (b":0\r\n", 0), (b":-12\r\n", -12),
    (b":9223372036854775807\r\n", 2 ** 63 - 1),
    (b"$5\r\nhello\r\n", b"hello"), (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None), (b"*-1\r\n", None), (b"*0\r\n", []),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),
    (b"*3\r\n:1\r\n$1\r\nx\r\n*1\r\n+y\r\n", [1, b"x", [b"y"]]),
    # RESP3
    (b"_\r\n", None), (b"#t\r\n", True), (b"#f\r\n", False),
    (b",1.5\r\n", 1.5), (b",-0.25e3\r\n", -250.0), (b",inf\r\n", math.inf),
    (b",-inf\r\n", -math.inf), (b",10\r\n", 10.0),
    (b"(3492890328409238509324850943850943825024385\r\n",
     3492890328409238509324850943850943825024385),
    (b"(-1\r\n", -1),
    (b"!21\r\nSYNTAX invalid syntax\r\n", RESPError("SYNTAX invalid syntax")),
    (b"=15\r\ntxt:Some string\r\n", b"Some string"),
    (b"%2\r\n+a\r\n:1\r\n$1\r\nb\r\n*1\r\n_\r\n", {b"a": 1, b"b": [None]}),
    (b"~2\r\n:1\r\n:2\r\n", [1, 2]),
    (b">2\r\n+message\r\n+hi\r\n", [b"message", b"hi"]),
    (b"|1\r\n+ttl\r\n:3\r\n+v\r\n", b"v"),        # the attribute is dropped
    (b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n", [1, 2]),
    (b"|0\r\n:7\r\n", 7),
    (b"*1\r\n%1\r\n+k\r\n~1\r\n*1\r\n*0\r\n", [{b"k": [[[]]]}]),
]


def same(a, b):
    if isinstance(a, BaseException) or isinstance(b, BaseException):
        return type(a) is type(b) and a.args == b.args
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("data, want", REPLIES)
def test_replies(data, want):
    got = frame(data, client=True)
    assert len(got) == 1 and same(got[0], want), got


def test_nan():
    assert math.isnan(frame(b",nan\r\n", client=True)[0])


def test_replies_cut_at_every_byte():
    data = b"".join(d for d, _ in REPLIES)
    want = [w for _, w in REPLIES]
    for cuts in [[i] for i in range(len(data) + 1)] + [range(len(data))]:
        got = feed_all(RESPParser(client=True), data, cuts)
        assert len(got) == len(want) and all(map(same, got, want)), cuts


BAD_REPLIES = [
    (b"x\r\n", "Protocol error, got 'x' as reply type byte"),
    (b"*1\r\n?\r\n", "Protocol error, got '?' as reply type byte"),
    (b":1.5\r\n", "Bad integer value"),
    (b":\r\n", "Bad integer value"),
    (b",1.5x\r\n", "Bad double value"),
    (b",\r\n", "Bad double value"),
    (b"#x\r\n", "Bad bool value"),
    (b"_x\r\n", "Bad nil value"),
    (b"(12a\r\n", "Bad bignum value"),
    (b"$-2\r\n", "Bulk string length out of range"),
    (b"!-1\r\n", "Bulk string length out of range"),
    (b"$x\r\n", "Bulk string length out of range"),
    (b"%-1\r\n", "Multi-bulk length out of range"),
    (b"*x\r\n", "Multi-bulk length out of range"),
    (b"$3\r\nabcd\r\n", "Bulk string not followed by CRLF"),
    (b"=3\r\ntxt\r\n", "Verbatim string without its 3-byte format and ':'"),
    (b"=4\r\ntxt_\r\n", "Verbatim string without its 3-byte format and ':'"),
]


@pytest.mark.parametrize("data, text", BAD_REPLIES)
def test_bad_replies(data, text):
    e = protocol_error(data, client=True)
    assert str(e) == text and e.reply is None


def test_reply_limits_configured_low():
    assert frame(b"$4\r\nabcd\r\n", client=True, max_bulk=4) == [b"abcd"]
    assert str(protocol_error(b"$5\r\n", client=True, max_bulk=4)) == \
        "Bulk string length out of range"
    assert frame(b"*3\r\n:1\r\n:2\r\n:3\r\n", client=True, max_args=3) == \
        [[1, 2, 3]]
    assert str(protocol_error(b"~4\r\n", client=True, max_args=3)) == \
        "Multi-bulk length out of range"
    assert frame(b"+abcd\r\n", client=True, max_inline=4) == [b"abcd"]
    assert str(protocol_error(b"+abcde\r\n", client=True, max_inline=4)) == \
        "Protocol error, reply line too long"
    nested = b"*1\r\n" * 3 + b":1\r\n"
    assert frame(nested, client=True, max_depth=3) == [[[[1]]]]
    assert str(protocol_error(nested, client=True, max_depth=2)) == \
        "Reply nested deeper than the depth limit"


def test_deep_nesting_refused_without_crashing():
    for opener in [b"*1\r\n", b"%1\r\n", b"~1\r\n", b">1\r\n", b"|1\r\n"]:
        with pytest.raises(RESPProtocolError, match="depth limit"):
            frame(opener * 100000 + b":1\r\n", client=True)
    deepest = b"*1\r\n" * 64 + b":1\r\n"
    got = frame(deepest, client=True)[0]
    for _ in range(64):
        got = got[0]
    assert got == 1


# ---- encoder ---------------------------------------------------------------------------

ENCODED = [
    (None, b"$-1\r\n", b"_\r\n"),
    (True, b":1\r\n", b"#t\r\n"),
    (False, b":0\r\n", b"#f\r\n"),
    (0, b":0\r\n", b":0\r\n"),
    (-(2 ** 63), b":-9223372036854775808\r\n", b":-9223372036854775808\r\n"),
    (2 ** 64, b"$20\r\n18446744073709551616\r\n", b"(18446744073709551616\r\n"),
    (b"hi", b"$2\r\nhi\r\n", b"$2\r\nhi\r\n"),
    (bytearray(b"\r\n"), b"$2\r\n\r\n\r\n", b"$2\r\n\r\n\r\n"),
    ("é", b"$2\r\n\xc3\xa9\r\n", b"$2\r\n\xc3\xa9\r\n"),
    (1.5, b"$3\r\n1.5\r\n", b",1.5\r\n"),
    (0.1, b"$3\r\n0.1\r\n", b",0.1\r\n"),
    (3.0, b"$1\r\n3\r\n", b",3\r\n"),
    (math.inf, b"$3\r\ninf\r\n", b",inf\r\n"),
    (-math.inf, b"$4\r\n-inf\r\n", b",-inf\r\n"),
    (math.nan, b"$3\r\nnan\r\n", b",nan\r\n"),
    ([], b"*0\r\n", b"*0\r\n"),
    ((1, [b"a"]), b"*2\r\n:1\r\n*1\r\n$1\r\na\r\n",
     b"*2\r\n:1\r\n*1\r\n$1\r\na\r\n"),
    ({b"k": 1}, b"*2\r\n$1\r\nk\r\n:1\r\n", b"%1\r\n$1\r\nk\r\n:1\r\n"),
    ({7}, b"*1\r\n:7\r\n", b"~1\r\n:7\r\n"),
    (RESPError("ERR bad"), b"-ERR bad\r\n", b"-ERR bad\r\n"),
    (RESPError(b"WRONGTYPE x"), b"-WRONGTYPE x\r\n", b"-WRONGTYPE x\r\n"),
]


@pytest.mark.parametrize("value, resp2, resp3", ENCODED)
def test_encode(value, resp2, resp3):
    assert RESPParser.encode(value) == resp2
    assert RESPParser.encode(value, protocol=2) == resp2
    assert RESPParser.encode(value, 3) == resp3


@pytest.mark.parametrize("value, exc", [
    (object(), TypeError), ([1, object()], TypeError),
    (RESPError("a\r\nb"), ValueError), (RESPError(1), TypeError),
    (RESPError(), TypeError)])
def test_encode_refuses(value, exc):
    with pytest.raises(exc):
        RESPParser.encode(value)


def test_encode_protocol_and_recursion():
    with pytest.raises(ValueError, match="protocol must be 2 or 3"):
        RESPParser.encode(1, 4)
    loop = []
    loop.append(loop)
    with pytest.raises(RecursionError):
        RESPParser.encode(loop)


# ---- generated replies: round trips, redis-py and hiredis ---------------------------

def gen_value(rng, proto, depth=0):
    """A random value the encoder takes, for `proto`."""
    kinds = ["none", "int", "big", "bytes", "str", "float", "bool", "error"]
    if depth < 4:
        kinds += ["list", "list", "dict", "set"]
    k = rng.choice(kinds)
    if k == "none":
        return None
    if k == "int":
        return rng.choice([0, 1, -1, rng.randint(-2 ** 63, 2 ** 63 - 1)])
    if k == "big":
        return rng.choice([1, -1]) * rng.randint(2 ** 63, 2 ** 200)
    if k == "bytes":
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 5, 40])))
    if k == "str":
        return "".join(rng.choice("abc é\r\n") for _ in range(rng.randint(0, 9)))
    if k == "float":
        return rng.choice([rng.uniform(-1e6, 1e6), rng.random(), 1e300, -5e-324,
                           2.0, math.inf, -math.inf])
    if k == "bool":
        return rng.random() < 0.5
    if k == "error":
        return RESPError("FOO " + "".join(rng.choice("xyz ") for _ in range(5)))
    n = rng.randint(0, 4)
    if k == "list":
        return [gen_value(rng, proto, depth + 1) for _ in range(n)]
    if k == "dict":
        keys = {rng.choice([rng.randint(0, 99), bytes([97 + rng.randrange(26)])])
                for _ in range(n)}
        return {key: gen_value(rng, proto, depth + 1) for key in keys}
    return {rng.randint(0, 999) for _ in range(n)}


def expected(v, proto):
    """What a client decodes from encode(v, proto), as redis-py does."""
    if isinstance(v, bool):
        return v if proto == 3 else int(v)
    if isinstance(v, int):
        if -2 ** 63 <= v < 2 ** 63 or proto == 3:
            return v
        return str(v).encode()
    if isinstance(v, float):
        if proto == 3:
            return v
        return RESPParser.encode(v)[RESPParser.encode(v).index(b"\n") + 1:-2]
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, (list, tuple, set)):
        return [expected(x, proto) for x in v]
    if isinstance(v, dict):
        if proto == 3:
            return {expected(k, proto): expected(x, proto) for k, x in v.items()}
        return [y for k, x in v.items() for y in (expected(k, proto),
                                                   expected(x, proto))]
    return v


def test_encoder_round_trip():
    rng = random.Random(1)
    for proto in (2, 3):
        values = [gen_value(rng, proto) for _ in range(500)]
        data = b"".join(RESPParser.encode(v, proto) for v in values)
        got = feed_all(RESPParser(client=True), data,
                       sorted(rng.sample(range(len(data)), 50)))
        assert len(got) == len(values)
        for v, g in zip(values, got):
            assert same(g, expected(v, proto)), (v, g)


def redis_py_parse(data, proto, count):
    """count replies from data through redis-py's pure-Python parser."""
    from redis._parsers import Encoder, _RESP2Parser, _RESP3Parser

    a, b = socket.socketpair()
    with a, b:
        class Conn:
            _sock = b
            socket_timeout = 5
            encoder = Encoder("utf-8", "strict", False)
        parser = (_RESP2Parser if proto == 2 else _RESP3Parser)(65536)
        parser.on_connect(Conn)
        a.sendall(data)
        out = [parser.read_response() for _ in range(count)]
        parser.on_disconnect()
    return out


def normalize(v):
    """redis-py's and hiredis's values in RESPParser's terms."""
    if isinstance(v, BaseException):
        return RESPError(str(v))
    if isinstance(v, list):
        return [normalize(x) for x in v]
    if isinstance(v, dict):
        return {normalize(k): normalize(x) for k, x in v.items()}
    return v


@pytest.mark.parametrize("proto", [2, 3])
def test_differential_redis_py(proto):
    pytest.importorskip("redis")
    rng = random.Random(proto)
    values = [gen_value(rng, proto) for _ in range(1000)]
    data = b"".join(RESPParser.encode(v, proto) for v in values)
    ours = frame(data, client=True)
    theirs = [normalize(v) for v in redis_py_parse(data, proto, len(values))]
    assert len(ours) == len(theirs) == len(values)
    for v, o, t in zip(values, ours, theirs):
        assert same(o, t), (v, o, t)


@pytest.mark.parametrize("proto", [2, 3])
def test_differential_hiredis(proto):
    hiredis = pytest.importorskip("hiredis")
    rng = random.Random(10 + proto)
    values = [gen_value(rng, proto) for _ in range(1000)]
    data = b"".join(RESPParser.encode(v, proto) for v in values)
    ours = frame(data, client=True)
    none = object()    # hiredis's default "no reply yet" is False
    reader = hiredis.Reader(notEnoughData=none)
    reader.feed(data)
    theirs = []
    while (v := reader.gets()) is not none:
        theirs.append(normalize(v))

    def as_hiredis(o):
        # hiredis gives RESP3 big numbers as their digits
        if isinstance(o, int) and not -2 ** 63 <= o < 2 ** 63:
            return str(o).encode()
        if isinstance(o, list):
            return [as_hiredis(x) for x in o]
        if isinstance(o, dict):
            return {k: as_hiredis(x) for k, x in o.items()}
        return o

    assert len(ours) == len(theirs) == len(values)
    for v, o, t in zip(values, ours, theirs):
        assert same(as_hiredis(o), t), (v, o, t)
