"""A Redis-compatible key-value server in plain Python on iocport.

    python examples/kv.py [--host 127.0.0.1] [--port 6380] [--aof FILE]
                          [--fsync always|everysec|no] [--backend ...]
                          [--workers N]

The commands redis-cli, redis-benchmark and redis-py use: PING, ECHO,
HELLO, SELECT 0, GET, SET (EX, PX, NX, XX), DEL, EXISTS, INCR, INCRBY,
DECR, MGET, MSET, EXPIRE, TTL, DBSIZE, FLUSHALL, LPUSH, RPUSH, LPOP, RPOP,
LRANGE, SADD, HSET, SPOP, CONFIG GET, COMMAND, QUIT, and MULTI / EXEC /
DISCARD (what redis-py's pipelines send).

With --aof FILE every write command is appended to FILE (RESP, as Redis's
appendonly file) with iocport's overlapped writes, and its reply leaves
only once the write (and with --fsync always, an fsync) has completed; on
start the file is replayed, and a torn last record (a crash mid-write) is
cut off.  Replies still leave in command order: conn.defer() holds a
command's reply until its write is done.
"""
from __future__ import annotations

import argparse
from collections import deque
from fnmatch import fnmatchcase
from itertools import islice
import sys
import threading
import time

import iocport
from iocport import resp

WRONGTYPE = resp.Error("WRONGTYPE Operation against a key holding the wrong "
                       "kind of value")
NOT_INT = resp.Error("ERR value is not an integer or out of range")
SYNTAX = resp.Error("ERR syntax error")


def arity(name):
    return resp.Error(f"ERR wrong number of arguments for '{name}' command")


class Store:
    """The data: values are bytes, lists (deque), sets (set) or hashes
    (dict); expiry times in ms since the epoch.  Handlers run one at a
    time per worker; with --workers > 1 the lock keeps the store whole."""

    def __init__(self):
        self.data = {}
        self.expires = {}
        self.lock = threading.Lock()
        # what CONFIG GET reports (redis-benchmark asks for these two)
        self.config = {b"save": b"", b"appendonly": b"no"}

    def get(self, key):
        at = self.expires.get(key)
        if at is not None and at <= time.time() * 1000:
            self.data.pop(key, None)
            del self.expires[key]
        return self.data.get(key)

    def typed(self, key, kind, create=False):
        v = self.get(key)
        if v is None and create:
            v = self.data[key] = kind()
        if v is not None and not isinstance(v, kind):
            return WRONGTYPE
        return v

    def delete(self, key):
        self.expires.pop(key, None)
        return self.data.pop(key, None) is not None


def to_int(b):
    try:
        return int(b)
    except ValueError:
        return None


def run(store, args):
    """Execute one command; returns its reply value."""
    name = args[0].lower()
    n = len(args)
    cmd = COMMANDS.get(name)
    if cmd is None:
        return resp.Error("ERR unknown command '%s'" % args[0].decode("latin-1"))
    fn, min_args, _ = cmd
    if n < min_args:
        return arity(name.decode())
    return fn(store, args)


def c_ping(store, a):
    return a[1] if len(a) > 1 else resp.PONG


def c_echo(store, a):
    return a[1]


def c_select(store, a):
    return resp.OK if a[1] == b"0" else resp.Error("ERR DB index is out of range")


def c_get(store, a):
    v = store.typed(a[1], bytes)
    return v


def c_set(store, a):
    key, value = a[1], a[2]
    ttl = None
    nx = xx = False
    i = 3
    while i < len(a):
        opt = a[i].upper()
        if opt in (b"EX", b"PX") and i + 1 < len(a):
            t = to_int(a[i + 1])
            if t is None or t <= 0:
                return resp.Error("ERR invalid expire time in 'set' command")
            ttl = t * 1000 if opt == b"EX" else t
            i += 2
        elif opt == b"NX":
            nx, i = True, i + 1
        elif opt == b"XX":
            xx, i = True, i + 1
        else:
            return SYNTAX
    exists = store.get(key) is not None
    if (nx and exists) or (xx and not exists):
        return None
    store.data[key] = value
    store.expires.pop(key, None)
    if ttl is not None:
        store.expires[key] = time.time() * 1000 + ttl
    return resp.OK


def c_del(store, a):
    return sum(store.delete(k) for k in a[1:])


def c_exists(store, a):
    return sum(store.get(k) is not None for k in a[1:])


def incr_by(store, key, by):
    v = store.typed(key, bytes)
    if v is WRONGTYPE:
        return v
    cur = 0 if v is None else to_int(v)
    if cur is None:
        return NOT_INT
    cur += by
    store.data[key] = b"%d" % cur
    return cur


def c_incr(store, a):
    return incr_by(store, a[1], 1)


def c_decr(store, a):
    return incr_by(store, a[1], -1)


def c_incrby(store, a):
    by = to_int(a[2])
    return NOT_INT if by is None else incr_by(store, a[1], by)


def c_mget(store, a):
    out = []
    for k in a[1:]:
        v = store.get(k)
        out.append(v if isinstance(v, bytes) else None)
    return out


def c_mset(store, a):
    if len(a) % 2 != 1:
        return arity("mset")
    for i in range(1, len(a), 2):
        store.data[a[i]] = a[i + 1]
        store.expires.pop(a[i], None)
    return resp.OK


def c_expire(store, a):
    t = to_int(a[2])
    if t is None:
        return NOT_INT
    if store.get(a[1]) is None:
        return 0
    store.expires[a[1]] = time.time() * 1000 + t * 1000
    return 1


def c_ttl(store, a):
    if store.get(a[1]) is None:
        return -2
    at = store.expires.get(a[1])
    return -1 if at is None else max(0, round((at - time.time() * 1000) / 1000))


def c_dbsize(store, a):
    return len(store.data)


def c_flushall(store, a):
    store.data.clear()
    store.expires.clear()
    return resp.OK


def push(store, a, left):
    lst = store.typed(a[1], deque, create=True)
    if lst is WRONGTYPE:
        return lst
    (lst.extendleft if left else lst.extend)(a[2:])
    return len(lst)


def c_lpush(store, a):
    return push(store, a, True)


def c_rpush(store, a):
    return push(store, a, False)


def pop(store, a, left):
    lst = store.typed(a[1], deque)
    if lst is WRONGTYPE or not lst:
        return lst if lst is WRONGTYPE else None
    v = lst.popleft() if left else lst.pop()
    if not lst:
        store.delete(a[1])
    return v


def c_lpop(store, a):
    return pop(store, a, True)


def c_rpop(store, a):
    return pop(store, a, False)


def c_lrange(store, a):
    lst = store.typed(a[1], deque)
    start, stop = to_int(a[2]), to_int(a[3])
    if start is None or stop is None:
        return NOT_INT
    if lst is WRONGTYPE:
        return lst
    if not lst:
        return []
    n = len(lst)
    start = max(start + n if start < 0 else start, 0)
    stop = stop + n if stop < 0 else stop
    return list(islice(lst, start, max(stop + 1, start)))


def c_sadd(store, a):
    s = store.typed(a[1], set, create=True)
    if s is WRONGTYPE:
        return s
    before = len(s)
    s.update(a[2:])
    return len(s) - before


def c_spop(store, a):
    s = store.typed(a[1], set)
    if s is WRONGTYPE or not s:
        return s if s is WRONGTYPE else None
    v = s.pop()
    if not s:
        store.delete(a[1])
    return v


def c_hset(store, a):
    if len(a) % 2 != 0:
        return arity("hset")
    h = store.typed(a[1], dict, create=True)
    if h is WRONGTYPE:
        return h
    added = 0
    for i in range(2, len(a), 2):
        added += a[i] not in h
        h[a[i]] = a[i + 1]
    return added


def c_config(store, a):
    if a[1].upper() == b"GET":
        # the parameters matching the patterns, as Redis answers (a map)
        return {name: value for name, value in store.config.items()
                if any(fnmatchcase(name, pat.lower()) for pat in a[2:])}
    return resp.OK


def c_command(store, a):
    return []       # (redis-cli asks for the command table)


# name: (function, least number of arguments with the name, writes)
COMMANDS = {
    b"ping": (c_ping, 1, False), b"echo": (c_echo, 2, False),
    b"select": (c_select, 2, False), b"get": (c_get, 2, False),
    b"set": (c_set, 3, True), b"del": (c_del, 2, True),
    b"exists": (c_exists, 2, False), b"incr": (c_incr, 2, True),
    b"decr": (c_decr, 2, True), b"incrby": (c_incrby, 3, True),
    b"mget": (c_mget, 2, False), b"mset": (c_mset, 3, True),
    b"expire": (c_expire, 3, True), b"ttl": (c_ttl, 2, False),
    b"dbsize": (c_dbsize, 1, False), b"flushall": (c_flushall, 1, True),
    b"lpush": (c_lpush, 3, True), b"rpush": (c_rpush, 3, True),
    b"lpop": (c_lpop, 2, True), b"rpop": (c_rpop, 2, True),
    b"lrange": (c_lrange, 4, False), b"sadd": (c_sadd, 3, True),
    b"spop": (c_spop, 2, True), b"hset": (c_hset, 4, True),
    b"config": (c_config, 2, False), b"command": (c_command, 1, False),
}


def encode_command(args):
    """A command as RESP, as it is stored in the AOF."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def replay(store, path):
    """Run the commands of an AOF; cut a torn last record.  Returns how
    many ran."""
    try:
        data = open(path, "rb").read()
    except FileNotFoundError:
        return 0
    parser = iocport._iocport.RESPParser()
    good = 0
    n = 0
    # feed record by record so that a torn tail leaves `good` at its start
    pos = 0
    while pos < len(data):
        end = _record_end(data, pos)
        if end is None:
            break
        for args in parser.feed(data[pos:end]):
            run(store, args)
            n += 1
        pos = good = end
    if good != len(data):
        print(f"kv: {path}: cut a torn last record ({len(data) - good} bytes)",
              file=sys.stderr)
        with open(path, "r+b") as f:
            f.truncate(good)
    return n


def _record_end(data, pos):
    """Where the RESP command at data[pos:] ends, or None if it is torn."""
    try:
        if data[pos:pos + 1] != b"*":
            return None
        eol = data.index(b"\r\n", pos)
        count = int(data[pos + 1:eol])
        p = eol + 2
        for _ in range(count):
            if data[p:p + 1] != b"$":
                return None
            eol = data.index(b"\r\n", p)
            size = int(data[p + 1:eol])
            p = eol + 2 + size + 2
            if p > len(data) or data[p - 2:p] != b"\r\n":
                return None
        return p
    except ValueError:
        return None


def main(argv=None):
    p = argparse.ArgumentParser(prog="kv.py", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6380)
    p.add_argument("--aof", metavar="FILE", default=None)
    p.add_argument("--fsync", choices=("always", "everysec", "no"), default="everysec")
    p.add_argument("--backend", choices=("auto", "uring", "epoll"), default=None)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)

    store = Store()
    if args.aof:
        store.config.update({b"appendonly": b"yes", b"appendfsync": args.fsync.encode()})
        n = replay(store, args.aof)
        if n:
            print(f"kv: replayed {n} commands from {args.aof}", file=sys.stderr)
    aof = None

    def on_command(conn, cmd):
        name = cmd[0].lower()
        if name == b"quit":
            conn.reply(resp.OK)
            conn.close()
            return
        if name == b"hello":
            ver = to_int(cmd[1]) if len(cmd) > 1 else 2
            if ver not in (2, 3):
                conn.reply(resp.Error("NOPROTO unsupported protocol version"))
                return
            conn.resp_protocol = ver
            conn.reply({b"server": b"kv.py", b"version": b"7.0.0", b"proto": ver,
                        b"id": conn.id, b"mode": b"standalone", b"role": b"master",
                        b"modules": []})
            return
        queued = conn.state     # inside MULTI: the commands queued
        if name == b"multi":
            if queued is not None:
                conn.reply(resp.Error("ERR MULTI calls can not be nested"))
            else:
                conn.state = []
                conn.reply(resp.OK)
            return
        if name in (b"exec", b"discard"):
            if queued is None:
                conn.reply(resp.Error(f"ERR {name.upper().decode()} without MULTI"))
                return
            conn.state = None
            if name == b"discard":
                conn.reply(resp.OK)
                return
            with store.lock:
                reply = [run(store, c) for c in queued]
            writes = [c for c, r in zip(queued, reply)
                      if COMMANDS.get(c[0].lower(), (0, 0, False))[2]
                      and not isinstance(r, resp.Error)]
        elif queued is not None:
            queued.append(cmd)
            conn.reply(resp.QUEUED)
            return
        else:
            with store.lock:
                reply = run(store, cmd)
            entry = COMMANDS.get(name)
            writes = [cmd] if entry is not None and entry[2] and \
                not isinstance(reply, resp.Error) else []
        if aof is None or not writes:
            conn.reply(reply)
            return
        later = conn.defer()    # the reply leaves once the write is done

        def written(n, err):
            if err is not None:
                later.reply(resp.Error(f"ERR AOF write failed: {err}"))
            elif args.fsync == "always":
                aof.sync(callback=lambda _, e: later.reply(
                    reply if e is None else resp.Error(f"ERR AOF fsync failed: {e}")),
                    data_only=True)
            else:
                later.reply(reply)

        aof.write(b"".join(map(encode_command, writes)), callback=written)

    server = iocport.Server(on_command, framing=iocport.RESP(), workers=args.workers,
                            backend=args.backend)
    if args.aof:
        aof = server.open_file(args.aof, "a")
    host, port = server.listen(args.host, args.port)
    done = threading.Event()
    if aof is not None and args.fsync == "everysec":
        def every_second():
            while not done.wait(1.0):
                aof.sync(data_only=True)
        threading.Thread(target=every_second, daemon=True).start()
    try:
        server.serve_forever(ready=lambda: print(f"listening on {host}:{port}",
                                                 flush=True))
    finally:
        done.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
