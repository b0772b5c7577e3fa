"""Framing: the spec classes (iocport.framing) and the native incremental
framer (iocport._iocport.Framer, i.e. src/lib/framing.c)."""
import itertools
import pickle
import random
import struct

import pytest

import iocport
from iocport._iocport import Framer, FramingError
from iocport.framing import (
    DEFAULT_MAX,
    Delimited,
    FixedSize,
    LengthPrefixed,
    parse_framing,
)

pytestmark = pytest.mark.timeout(30)

HDR_FMT = {1: "B", 2: "H", 4: "I", 8: "Q"}
ORDERS = ["big", "little"]


def header(size, byteorder, value):
    return struct.pack((">" if byteorder == "big" else "<") + HDR_FMT[size],
                       value)


def feed_chunks(framer, data, chunks):
    """Feed data cut into the given chunk lengths; all messages out."""
    out = []
    pos = 0
    for n in chunks:
        out += framer.feed(data[pos:pos + n])
        pos += n
    out += framer.feed(data[pos:])
    return out


def random_chunks(rng, total):
    chunks = []
    while sum(chunks) < total:
        chunks.append(rng.randint(0, 7) if rng.random() < 0.8
                      else rng.randint(0, 100))
    return chunks


PAYLOADS = [b"", b"a", b"hello", bytes(range(256)) * 3, b"\x00" * 17]


def length_payloads(size):
    limit = 255 if size == 1 else None
    return [p for p in PAYLOADS if limit is None or len(p) <= limit - size]


# ---- spec classes ---------------------------------------------------------

def length(hdr_size, big_endian, hdr_included, max_size):
    return {"kind": "length", "hdr_size": hdr_size, "big_endian": big_endian,
            "hdr_included": hdr_included, "max_size": max_size}


def test_spec_defaults_and_dicts():
    assert DEFAULT_MAX == 16 * 1024 * 1024
    assert LengthPrefixed()._spec() == length(4, True, False, DEFAULT_MAX)
    assert LengthPrefixed(2, byteorder="little", includes_header=True,
                          max_size=100)._spec() == length(2, False, True, 100)
    assert Delimited()._spec() == {"kind": "delimited", "delim": b"\n",
                                   "max_size": DEFAULT_MAX}
    assert Delimited(b"\r\n", max_size=5)._spec() == \
        {"kind": "delimited", "delim": b"\r\n", "max_size": 5}
    assert FixedSize(12)._spec() == {"kind": "fixed", "size": 12, "max_size": 12}
    assert FixedSize(12, max_size=64)._spec() == \
        {"kind": "fixed", "size": 12, "max_size": 64}


def test_spec_repr_eq_hash():
    for spec in [LengthPrefixed(), LengthPrefixed(1, byteorder="little"),
                 LengthPrefixed(8, includes_header=True, max_size=10),
                 Delimited(), Delimited(b"\r\n", max_size=99),
                 FixedSize(3), FixedSize(3, max_size=7)]:
        from iocport import framing as m
        assert eval(repr(spec), vars(m)) == spec
        assert hash(eval(repr(spec), vars(m))) == hash(spec)
        assert pickle.loads(pickle.dumps(spec)) == spec
    assert repr(LengthPrefixed(4)) == "LengthPrefixed(4)"
    assert repr(Delimited()) == "Delimited(b'\\n')"
    assert LengthPrefixed(4) != LengthPrefixed(2)
    assert LengthPrefixed(4) != LengthPrefixed(4, byteorder="little")
    assert Delimited(b"\n") != Delimited(b"\r\n")
    assert FixedSize(4) != LengthPrefixed(4)
    assert Delimited(bytearray(b"ab")) == Delimited(b"ab")


def test_spec_immutable():
    spec = LengthPrefixed(4)
    with pytest.raises(AttributeError):
        spec.size = 2
    with pytest.raises(AttributeError):
        del spec.max_size
    assert spec.size == 4


@pytest.mark.parametrize("make", [
    lambda: LengthPrefixed("4"),
    lambda: LengthPrefixed(4.0),
    lambda: LengthPrefixed(True),
    lambda: LengthPrefixed(4, byteorder=1),
    lambda: LengthPrefixed(4, includes_header=1),
    lambda: LengthPrefixed(4, max_size="big"),
    lambda: LengthPrefixed(4, max_size=True),
    lambda: Delimited("\n"),
    lambda: Delimited(10),
    lambda: Delimited(b"\n", max_size=1.5),
    lambda: FixedSize("3"),
    lambda: FixedSize(True),
    lambda: FixedSize(3, max_size=False),
    lambda: parse_framing(4),
])
def test_spec_type_errors(make):
    with pytest.raises(TypeError):
        make()


@pytest.mark.parametrize("make", [
    lambda: LengthPrefixed(3),
    lambda: LengthPrefixed(0),
    lambda: LengthPrefixed(16),
    lambda: LengthPrefixed(4, byteorder="middle"),
    lambda: LengthPrefixed(4, max_size=0),
    lambda: LengthPrefixed(4, max_size=-1),
    lambda: LengthPrefixed(4, max_size=1 << 64),
    lambda: Delimited(b""),
    lambda: Delimited(b"123456789"),
    lambda: Delimited(b"\n", max_size=0),
    lambda: FixedSize(0),
    lambda: FixedSize(-5),
    lambda: FixedSize(10, max_size=9),
])
def test_spec_value_errors(make):
    with pytest.raises(ValueError):
        make()


def test_parse_framing():
    assert parse_framing("len4") == LengthPrefixed(4)
    for n in (1, 2, 4, 8):
        assert parse_framing(f"len{n}") == LengthPrefixed(n)
        assert parse_framing(f"len{n}le") == \
            LengthPrefixed(n, byteorder="little")
        assert parse_framing(f"len{n}be") == LengthPrefixed(n)
    assert parse_framing("line") == Delimited(b"\n")
    assert parse_framing(" LINE ") == Delimited(b"\n")
    assert parse_framing("fixed:16") == FixedSize(16)
    for bad in ["", "len", "len3", "len4xx", "len16", "fixed", "fixed:",
                "fixed:x", "fixed:-1", "fixed:0", "lines", "4"]:
        with pytest.raises(ValueError):
            parse_framing(bad)


# ---- Framer: construction ---------------------------------------------------

class FakeSpec:
    def __init__(self, t):
        self.t = t

    def _spec(self):
        return self.t


def test_framer_rejects_non_spec():
    with pytest.raises(TypeError, match="framing spec such as "
                       r"LengthPrefixed\(4\), got int"):
        Framer(4)
    with pytest.raises(TypeError):
        Framer("len4")
    with pytest.raises(TypeError):
        Framer()
    with pytest.raises(TypeError):
        Framer(LengthPrefixed(4), 1)
    assert Framer(spec=LengthPrefixed(4)).spec == LengthPrefixed(4)


def spec(kind="length", **fields):
    fields.setdefault("max_size", 100)
    return dict(fields, kind=kind)


@pytest.mark.parametrize("t", [
    None,
    (1, 4, True, False, b"", 0, 100),              # the old tuple form
    {"hdr_size": 4, "max_size": 100},              # no kind
    spec(1, hdr_size=4),                           # kind not a name
    spec(hdr_size=4.0),                            # hdr_size not int
    spec(hdr_size=4, big_endian="yes"),            # big_endian not bool
    spec("delimited", delim="\n"),                 # delim not bytes
    spec(hdr_size=4, max_size=True),               # bool as int
])
def test_framer_bad_spec_type(t):
    with pytest.raises(TypeError):
        Framer(FakeSpec(t))


@pytest.mark.parametrize("t", [
    spec("lines", hdr_size=4),                     # unknown kind
    spec("", hdr_size=4),
    spec(hdr_size=3),                              # bad header size
    spec(hdr_size=300),
    spec(hdr_size=4, max_size=0),                  # max_size 0
    spec(hdr_size=4, max_size=-1),                 # negative
    spec(hdr_size=4, max_size=1 << 64),            # too large
    spec("delimited", delim=b""),                  # empty delimiter
    spec("delimited"),                             # no delimiter
    spec("delimited", delim=b"123456789"),         # long delimiter
    spec("fixed"),                                 # fixed size 0
    spec("fixed", size=200),                       # fixed over max
])
def test_framer_bad_spec_value(t):
    with pytest.raises(ValueError):
        Framer(FakeSpec(t))


def test_framer_spec_error_propagates():
    class Boom:
        def _spec(self):
            raise KeyError("boom")
    with pytest.raises(KeyError):
        Framer(Boom())


def test_framer_repr_and_pending():
    fr = Framer(LengthPrefixed(2))
    assert fr.pending == 0
    assert fr.feed(b"\x00\x03ab") == []
    assert fr.pending == 4
    assert "LengthPrefixed(2)" in repr(fr) and "pending=4" in repr(fr)
    assert fr.feed(b"c\x00") == [b"abc"]
    assert fr.pending == 1
    with pytest.raises(AttributeError):
        fr.pending = 0


def test_feed_and_wrap_argument_types():
    fr = Framer(LengthPrefixed(4))
    for bad in ["text", 5, None, [1, 2]]:
        with pytest.raises(TypeError):
            fr.feed(bad)
        with pytest.raises(TypeError):
            fr.wrap(bad)
    # Any bytes-like object works.
    data = fr.wrap(b"xyz")
    assert fr.feed(bytearray(data)) == [b"xyz"]
    assert fr.feed(memoryview(data)) == [b"xyz"]
    assert fr.wrap(bytearray(b"q")) == fr.wrap(memoryview(b"q"))
    assert fr.pending == 0


# ---- Framer: length prefix --------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 4, 8])
@pytest.mark.parametrize("byteorder", ORDERS)
@pytest.mark.parametrize("included", [False, True])
def test_length_prefixed(size, byteorder, included):
    spec = LengthPrefixed(size, byteorder=byteorder, includes_header=included)
    payloads = length_payloads(size)
    stream = b"".join(
        header(size, byteorder, len(p) + (size if included else 0)) + p
        for p in payloads)
    # wrap produces exactly this encoding
    fr = Framer(spec)
    assert b"".join(fr.wrap(p) for p in payloads) == stream
    # all at once
    assert Framer(spec).feed(stream) == payloads
    # byte by byte
    fr = Framer(spec)
    out = []
    for i in range(len(stream)):
        out += fr.feed(stream[i:i + 1])
    assert out == payloads and fr.pending == 0
    # random chunks
    rng = random.Random(size * 10 + included)
    for _ in range(20):
        fr = Framer(spec)
        assert feed_chunks(fr, stream, random_chunks(rng, len(stream))) == \
            payloads
        assert fr.pending == 0


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_length_split_everywhere(size):
    spec = LengthPrefixed(size)
    stream = b"".join(Framer(spec).wrap(p) for p in [b"ab", b"", b"cde"])
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            fr = Framer(spec)
            out = fr.feed(stream[:i]) + fr.feed(stream[i:j]) + \
                fr.feed(stream[j:])
            assert out == [b"ab", b"", b"cde"]


@pytest.mark.parametrize("size", [1, 2, 4, 8])
@pytest.mark.parametrize("byteorder", ORDERS)
def test_length_too_big_from_header_alone(size, byteorder):
    spec = LengthPrefixed(size, byteorder=byteorder, max_size=10)
    fr = Framer(spec)
    assert fr.feed(header(size, byteorder, 10) + b"x" * 10) == [b"x" * 10]
    # A header announcing 11 bytes fails before any of the body arrives.
    with pytest.raises(ValueError, match="maximum size"):
        fr.feed(header(size, byteorder, 11))
    # Sticky: later feeds raise the same, even with valid data.
    with pytest.raises(ValueError, match="maximum size"):
        fr.feed(header(size, byteorder, 1) + b"a")
    with pytest.raises(ValueError, match="maximum size"):
        fr.feed(b"")
    assert fr.pending == 0
    assert "failed" in repr(fr)


def test_length_too_big_header_included():
    spec = LengthPrefixed(2, includes_header=True, max_size=10)
    fr = Framer(spec)
    assert fr.feed(header(2, "big", 12) + b"y" * 10) == [b"y" * 10]
    with pytest.raises(ValueError, match="maximum size"):
        Framer(spec).feed(header(2, "big", 13))


def test_length_huge_header_is_too_big():
    fr = Framer(LengthPrefixed(8))
    with pytest.raises(ValueError, match="maximum size"):
        fr.feed(b"\xff" * 8)
    fr = Framer(LengthPrefixed(8, max_size=(1 << 64) - 1))
    with pytest.raises(ValueError):
        fr.feed(b"\xff" * 8)   # cannot be buffered on any machine


@pytest.mark.parametrize("size", [1, 2, 4, 8])
@pytest.mark.parametrize("byteorder", ORDERS)
def test_length_bad_header(size, byteorder):
    spec = LengthPrefixed(size, byteorder=byteorder, includes_header=True)
    # length == size is an empty message
    assert Framer(spec).feed(header(size, byteorder, size)) == [b""]
    for bad in range(size):
        fr = Framer(spec)
        assert fr.feed(Framer(spec).wrap(b"ok")) == [b"ok"]
        with pytest.raises(ValueError, match="bad length header"):
            fr.feed(header(size, byteorder, bad))
        with pytest.raises(ValueError, match="bad length header"):
            fr.feed(b"")


def test_error_keeps_messages_of_that_feed_and_drops_partial():
    fr = Framer(LengthPrefixed(1, max_size=3))
    with pytest.raises(FramingError) as info:
        fr.feed(b"\x01a\x02bc\x09")
    assert info.value.messages == [b"a", b"bc"]
    assert fr.pending == 0


def test_framing_error_is_exported_value_error():
    assert iocport.FramingError is FramingError
    assert "FramingError" in iocport.__all__
    assert issubclass(FramingError, ValueError)


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_length_error_carries_messages_before_it(size):
    spec = LengthPrefixed(size, max_size=10)
    good = Framer(spec)
    data = good.wrap(b"first") + good.wrap(b"") + good.wrap(b"x" * 10) + \
        header(size, "big", 11) + b"y" * 11 + good.wrap(b"after")
    fr = Framer(spec)
    with pytest.raises(FramingError, match="^message exceeds the maximum size$") \
            as info:
        fr.feed(data)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.messages == [b"first", b"", b"x" * 10]
    assert all(type(m) is bytes for m in err.messages)
    # Still unusable afterwards, with nothing more to hand over.
    for later in (good.wrap(b"ok"), b""):
        with pytest.raises(FramingError, match="maximum size") as info:
            fr.feed(later)
        assert info.value.messages == []
    assert fr.pending == 0


def test_bad_header_error_carries_messages_before_it():
    spec = LengthPrefixed(2, includes_header=True)
    good = Framer(spec)
    fr = Framer(spec)
    assert fr.feed(good.wrap(b"a")[:1]) == []
    with pytest.raises(FramingError, match="^bad length header") as info:
        fr.feed(good.wrap(b"a")[1:] + good.wrap(b"bc") + header(2, "big", 1))
    assert info.value.messages == [b"a", b"bc"]
    with pytest.raises(FramingError, match="^bad length header") as info:
        fr.feed(good.wrap(b"d"))
    assert info.value.messages == []


def test_wrap_too_big_for_header():
    fr = Framer(LengthPrefixed(1))
    assert fr.wrap(b"x" * 255) == b"\xff" + b"x" * 255
    with pytest.raises(ValueError, match="1-byte"):
        fr.wrap(b"x" * 256)
    fr = Framer(LengthPrefixed(1, includes_header=True))
    assert fr.wrap(b"x" * 254)[:1] == b"\xff"
    with pytest.raises(ValueError):
        fr.wrap(b"x" * 255)
    fr = Framer(LengthPrefixed(2, byteorder="little"))
    assert fr.wrap(b"x" * 65535)[:2] == b"\xff\xff"
    with pytest.raises(ValueError, match="2-byte"):
        fr.wrap(b"x" * 65536)


def test_wrap_not_limited_by_max_size():
    fr = Framer(LengthPrefixed(4, max_size=4))
    assert fr.wrap(b"123456") == b"\x00\x00\x00\x06123456"
    fr = Framer(Delimited(b"\n", max_size=2))
    assert fr.wrap(b"12345") == b"12345\n"


# ---- Framer: delimiters -------------------------------------------------------

DELIMS = [b"\n", b"\r\n", b"\x00\x00", b"abab", b"\xff\x00\xff", b"12345678",
          b"aaa"]


def delim_payloads(delim):
    # Payloads that contain prefixes and pieces of the delimiter but never
    # the whole delimiter (nor end in one of its proper prefixes followed by
    # its rest).
    base = [b"", b"x", b"hello world", b"y" * 300]
    for k in range(1, len(delim)):
        base.append(b"z" + delim[:k] + b"q")
        base.append(b"q" + delim[k:])
    return [p for p in base if delim not in p + delim[:-1]
            and not _ends_with_overlap(p, delim)]


def _ends_with_overlap(p, delim):
    s = p + delim
    return s.find(delim) != len(p)


@pytest.mark.parametrize("delim", DELIMS)
def test_delimited(delim):
    spec = Delimited(delim)
    payloads = delim_payloads(delim)
    stream = b"".join(p + delim for p in payloads)
    fr = Framer(spec)
    assert b"".join(fr.wrap(p) for p in payloads) == stream
    assert Framer(spec).feed(stream) == payloads
    fr = Framer(spec)
    out = []
    for i in range(len(stream)):
        out += fr.feed(stream[i:i + 1])
    assert out == payloads and fr.pending == 0
    rng = random.Random(len(delim) * 1000 + delim[0])
    for _ in range(30):
        fr = Framer(spec)
        assert feed_chunks(fr, stream, random_chunks(rng, len(stream))) == \
            payloads


@pytest.mark.parametrize("delim", DELIMS)
def test_delimiter_split_at_every_point(delim):
    spec = Delimited(delim)
    stream = b"xy" + delim + b"cd" + delim
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            fr = Framer(spec)
            out = fr.feed(stream[:i]) + fr.feed(stream[i:j]) + \
                fr.feed(stream[j:])
            assert out == [b"xy", b"cd"], (i, j)
            assert fr.pending == 0


def test_delimiter_self_overlap():
    # "aab" in "aaab": a naive resume after "aa" would miss it.
    fr = Framer(Delimited(b"aab"))
    assert fr.feed(b"xa") == []
    assert fr.feed(b"a") == []
    assert fr.feed(b"a") == []
    assert fr.feed(b"b") == [b"xa"]
    fr = Framer(Delimited(b"\r\n"))
    assert fr.feed(b"a\r") == []
    assert fr.feed(b"\r") == []
    assert fr.feed(b"\n") == [b"a\r"]


def test_delimited_pending_and_empty_messages():
    fr = Framer(Delimited(b"\n"))
    assert fr.feed(b"\n\n\nabc") == [b"", b"", b""]
    assert fr.pending == 3
    assert fr.feed(b"def") == []
    assert fr.feed(b"\n") == [b"abcdef"]


def test_delimited_max_size():
    fr = Framer(Delimited(b"\r\n", max_size=5))
    assert fr.feed(b"12345\r\n") == [b"12345"]
    # Without the delimiter the limit is hit once the payload cannot fit.
    assert fr.feed(b"12345\r") == []
    with pytest.raises(ValueError, match="maximum size"):
        fr.feed(b"x")
    with pytest.raises(ValueError, match="maximum size"):
        fr.feed(b"\r\n")
    # With the delimiter present but too far.
    fr = Framer(Delimited(b"\n", max_size=5))
    with pytest.raises(ValueError, match="maximum size"):
        fr.feed(b"123456\n")
    # Grows slowly past the limit.
    fr = Framer(Delimited(b"\n", max_size=100))
    with pytest.raises(ValueError, match="maximum size"):
        for _ in range(200):
            assert fr.feed(b"x") == []


def test_delimited_error_carries_lines_before_it():
    fr = Framer(Delimited(b"\r\n", max_size=5))
    assert fr.feed(b"one\r\ntw") == [b"one"]
    # The line over max_size has its delimiter here...
    with pytest.raises(FramingError, match="^message exceeds the maximum size$") \
            as info:
        fr.feed(b"o\r\n\r\n12345\r\n123456\r\nlater\r\n")
    err = info.value
    assert isinstance(err, ValueError)
    assert err.messages == [b"two", b"", b"12345"]
    with pytest.raises(FramingError) as info:
        fr.feed(b"ok\r\n")
    assert info.value.messages == []
    # ...and here it has none yet: too long already.
    fr = Framer(Delimited(b"\n", max_size=5))
    with pytest.raises(FramingError) as info:
        fr.feed(b"a\nbb\n123456")
    assert info.value.messages == [b"a", b"bb"]


def test_delimited_large_stream_linear():
    # One long message fed in small pieces: must not rescan (this would take
    # far longer than the timeout if every feed searched from the start).
    fr = Framer(Delimited(b"\r\n", max_size=1 << 24))
    chunk = b"x" * 16
    for _ in range(200_000):
        assert fr.feed(chunk) == []
    assert fr.feed(b"\r\n") == [chunk * 200_000]
    assert fr.pending == 0


# ---- Framer: fixed size -------------------------------------------------------

@pytest.mark.parametrize("size", [1, 3, 100])
def test_fixed_size(size):
    spec = FixedSize(size)
    rng = random.Random(size)
    payloads = [bytes(rng.randrange(256) for _ in range(size))
                for _ in range(10)]
    stream = b"".join(payloads)
    fr = Framer(spec)
    assert b"".join(fr.wrap(p) for p in payloads) == stream
    assert Framer(spec).feed(stream) == payloads
    fr = Framer(spec)
    out = []
    for i in range(len(stream)):
        out += fr.feed(stream[i:i + 1])
    assert out == payloads
    tail = b"t" * (size - 1)    # an incomplete message stays pending
    for _ in range(20):
        fr = Framer(spec)
        assert feed_chunks(fr, stream + tail,
                           random_chunks(rng, len(stream))) == payloads
        assert fr.pending == len(tail)


def test_fixed_wrap_wrong_size():
    fr = Framer(FixedSize(4))
    assert fr.wrap(b"abcd") == b"abcd"
    with pytest.raises(ValueError, match="exactly 4 bytes"):
        fr.wrap(b"abc")
    with pytest.raises(ValueError):
        fr.wrap(b"abcde")


# ---- round trips ---------------------------------------------------------------

@pytest.mark.parametrize("spec", [
    LengthPrefixed(1), LengthPrefixed(2, byteorder="little"),
    LengthPrefixed(4, includes_header=True), LengthPrefixed(8),
    Delimited(b"\n"), Delimited(b"\r\n\r\n"),
])
def test_wrap_feed_round_trip(spec):
    rng = random.Random(repr(spec))
    delim = getattr(spec, "delimiter", None)
    payloads = []
    while len(payloads) < 200:
        p = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        if delim is not None:
            p = p.replace(delim[:1], b"")
        payloads.append(p)
    sender, receiver = Framer(spec), Framer(spec)
    stream = b"".join(sender.wrap(p) for p in payloads)
    assert feed_chunks(receiver, stream, random_chunks(rng, len(stream))) == \
        payloads
    assert receiver.pending == 0


def test_large_messages():
    spec = LengthPrefixed(4)
    big = bytes(range(256)) * 4096        # 1 MiB
    fr = Framer(spec)
    stream = fr.wrap(big) * 3
    out = []
    for i in range(0, len(stream), 65536):
        out += fr.feed(stream[i:i + 65536])
    assert out == [big] * 3
    assert fr.pending == 0


# ---- a bad frame loses none of the messages before it -------------------------

def bad_tail(rng, spec):
    """Bytes that start with a bad frame for spec (then anything)."""
    if isinstance(spec, Delimited):
        # Longer than max_size, with its delimiter; or without, long enough
        # that no delimiter could still end it in time.
        extra = rng.randrange(4)
        if rng.random() < 0.5:
            return b"x" * (spec.max_size + 1 + extra) + spec.delimiter
        return b"x" * (spec.max_size + len(spec.delimiter) + extra)
    size = spec.size
    if spec.includes_header and rng.random() < 0.5:
        value = rng.randrange(size)                # shorter than the header
    else:
        value = spec.max_size + 1 + rng.randrange(3)
        if spec.includes_header:
            value += size
    return header(size, spec.byteorder, value) + b"z" * rng.randrange(20)


@pytest.mark.parametrize("spec", [
    LengthPrefixed(1, max_size=40), LengthPrefixed(2, byteorder="little",
                                                   max_size=40),
    LengthPrefixed(4, includes_header=True, max_size=40),
    LengthPrefixed(8, includes_header=True, byteorder="little", max_size=40),
    Delimited(b"\n", max_size=40), Delimited(b"\r\n", max_size=40),
    Delimited(b"abab", max_size=40),
])
def test_bad_frame_loses_nothing_before_it(spec):
    # Random good frames, one bad frame, maybe more good frames, fed in
    # random chunks: the messages before the bad frame come out exactly once
    # and in order, from earlier feed() calls or on the FramingError; none
    # after it does, and every feed() after the error raises with [].
    rng = random.Random(repr(spec))
    delim = getattr(spec, "delimiter", None)
    wrapper = Framer(spec)
    for _ in range(150):
        payloads = []
        for _ in range(rng.randrange(0, 12)):
            p = rng.randbytes(rng.randrange(0, spec.max_size + 1))
            if delim is not None:
                p = p.replace(delim[:1], b"")
            payloads.append(p)
        after = b"".join(wrapper.wrap(b"after%d" % i)
                         for i in range(rng.randrange(3)))
        stream = b"".join(wrapper.wrap(p) for p in payloads) + \
            bad_tail(rng, spec) + after
        if rng.random() < 0.5:
            # Small pieces (a frame spans several feeds)...
            chunks = random_chunks(rng, len(stream))
            cuts = list(itertools.accumulate(chunks))[:-1]
        else:
            # ...or a few cut points (many frames per feed).
            cuts = sorted(rng.randrange(len(stream) + 1)
                          for _ in range(rng.randrange(4)))
        fr = Framer(spec)
        out = []
        errors = 0
        for start, end in zip([0] + cuts, cuts + [len(stream)]):
            try:
                out += fr.feed(stream[start:end])
            except FramingError as e:
                if errors:
                    assert e.messages == []
                else:
                    out += e.messages
                errors += 1
        assert errors >= 1
        assert out == payloads
