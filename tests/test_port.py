"""Tests for iocport.Port, the completion port.

LIFO order and the concurrency bound are checked deterministically: a thread
is known to be asleep in get() when ``port.waiters`` says so, and post() /
leave() decide synchronously which waiter gets a packet (``running``,
``queued`` and ``waiters`` are exact right after they return).  Polling those
counters with a deadline is synchronisation, not sleep-and-hope.
"""

import contextlib
import gc
import os
import queue
import signal
import sys
import threading
import time
import weakref

import pytest

from iocport import _iocport

Port = _iocport.Port
Packet = _iocport.Packet
PortClosedError = _iocport.PortClosedError

pytestmark = pytest.mark.timeout(30)

DEADLINE = 10.0


def wait_until(pred, what="condition"):
    end = time.monotonic() + DEADLINE
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


class Worker:
    """A thread that runs port calls on command, so a test decides exactly
    what each thread does and when."""

    def __init__(self, port, name):
        self.port = port
        self.name = name
        self.cmds = queue.Queue()
        self.results = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=name,
                                       daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            cmd = self.cmds.get()
            if cmd is None:
                return
            meth, args = cmd
            try:
                res = ("ok", getattr(self.port, meth)(*args))
            except BaseException as e:  # noqa: BLE001 - reported to the test
                res = ("err", e)
            self.results.put(res)

    def start(self, meth, *args):
        self.cmds.put((meth, args))

    def result(self):
        kind, val = self.results.get(timeout=DEADLINE)
        if kind == "err":
            raise val
        return val

    def idle(self):
        return self.results.empty()

    def stop(self):
        self.cmds.put(None)
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive()


@pytest.fixture
def workers():
    """Make workers; every one is stopped and joined at the end."""
    made = []
    ports = []

    def make(port, name="w"):
        w = Worker(port, name)
        made.append(w)
        ports.append(port)
        return w

    yield make
    for p in ports:
        p.close()              # wakes anything still waiting
    for w in made:
        w.stop()


def start_waiting(worker, port, n_before, meth="get", *args):
    """Start a blocking get on worker and return once it is asleep."""
    worker.start(meth, *args)
    wait_until(lambda: port.waiters == n_before + 1, "waiter asleep")


# ---- basics --------------------------------------------------------------


def test_round_trip_and_packet_type():
    with Port(2) as p:
        assert p.concurrency == 2
        p.post(7, 100, "hello")
        pk = p.get()
        assert isinstance(pk, Packet) and isinstance(pk, tuple)
        assert pk == (7, 100, "hello")
        assert (pk.key, pk.nbytes, pk.value) == (7, 100, "hello")
        key, nbytes, value = pk
        assert key == 7
        p.post(key=2**64 - 1, nbytes=2**64 - 1)
        assert p.get(timeout=0) == (2**64 - 1, 2**64 - 1, None)
        p.post()
        assert p.get(0) == (0, 0, None)


def test_default_concurrency():
    p = Port()
    assert p.concurrency == (os.cpu_count() or 1)
    assert Port(concurrency=0).concurrency == p.concurrency


def test_fifo_order():
    p = Port(1)
    for i in range(1000):       # also grows the ring buffer
        p.post(i, value=i * 2)
    assert p.queued == 1000
    for i in range(1000):
        assert p.get(0) == (i, 0, i * 2)
    assert p.queued == 0


def test_ring_wraps_and_grows():
    p = Port(1)
    n = 0
    for round_ in range(50):
        for i in range(round_ * 3):
            p.post(n + i)
        for i in range(round_ * 3):
            assert p.get(0).key == n + i
        n += round_ * 3
        p.post(n)
        assert p.get(0).key == n
        n += 1


def test_values_kept_alive():
    value = object()
    base = sys.getrefcount(value)
    p = Port(1)
    p.post(value=value)
    p.post(value=value)
    assert sys.getrefcount(value) == base + 2
    pk = p.get()
    assert pk.value is value
    assert sys.getrefcount(value) == base + 2
    del pk
    assert sys.getrefcount(value) == base + 1
    del p                       # dealloc drops queued values
    assert sys.getrefcount(value) == base


def test_close_drops_queued_values():
    value = object()
    base = sys.getrefcount(value)
    p = Port(1)
    for _ in range(10):
        p.post(value=value)
    p.close()
    assert sys.getrefcount(value) == base
    assert p.queued == 0


def test_cycle_through_queue_is_collected():
    class Holder:
        pass

    h = Holder()
    p = Port(1)
    h.port = p
    p.post(value=h)
    ref = weakref.ref(h)
    del h, p
    gc.collect()
    assert ref() is None


def test_get_many():
    p = Port(1)
    for i in range(5):
        p.post(i)
    got = p.get_many(3)
    assert [pk.key for pk in got] == [0, 1, 2]
    assert all(isinstance(pk, Packet) for pk in got)
    assert [pk.key for pk in p.get_many(max=10, timeout=1)] == [3, 4]
    assert p.get_many(4, timeout=0) == []
    assert p.get_many(4, 0.01) == []
    for i in range(5000):
        p.post(i)
    assert len(p.get_many(10**9)) == 4096     # per-call limit
    assert len(p.get_many(2**70)) == 5000 - 4096


def test_timeout():
    p = Port(1)
    with pytest.raises(TimeoutError):
        p.get(timeout=0)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        p.get(timeout=0.05)
    assert time.monotonic() - t0 >= 0.045
    with pytest.raises(TimeoutError):
        p.get(0.001)
    assert p.waiters == 0       # a timed-out wait leaves the stack


@pytest.mark.parametrize("args,kwargs,exc", [
    ((-1,), {}, ValueError),
    ((2**70,), {}, ValueError),
    (("2",), {}, TypeError),
    ((1.5,), {}, TypeError),
    ((True,), {}, TypeError),
    ((), {"concurrency": None}, TypeError),
    ((), {"bogus": 1}, TypeError),
    ((1, 2), {}, TypeError),
])
def test_constructor_arguments(args, kwargs, exc):
    with pytest.raises(exc):
        Port(*args, **kwargs)


def test_wrong_arguments():
    p = Port(1)
    with pytest.raises(ValueError, match="key"):
        p.post(key=-1)
    with pytest.raises(ValueError, match="key"):
        p.post(2**64)
    with pytest.raises(ValueError, match="nbytes"):
        p.post(0, -1)
    with pytest.raises(TypeError, match="key"):
        p.post("1")
    with pytest.raises(TypeError, match="nbytes"):
        p.post(0, 1.0)
    with pytest.raises(TypeError):
        p.post(1, 2, 3, 4)
    with pytest.raises(TypeError):
        p.post(1, key=1)
    with pytest.raises(TypeError):
        p.post(bogus=1)
    with pytest.raises(ValueError):
        p.get(timeout=-1)
    with pytest.raises(ValueError):
        p.get(timeout=float("nan"))
    with pytest.raises(TypeError):
        p.get(timeout="1")
    with pytest.raises(TypeError):
        p.get(1, 2)
    with pytest.raises(TypeError):
        p.get_many()
    with pytest.raises(ValueError):
        p.get_many(0)
    with pytest.raises(ValueError):
        p.get_many(-5)
    with pytest.raises(TypeError):
        p.get_many("3")
    with pytest.raises(TypeError):
        p.get_many(3.0)
    with pytest.raises(AttributeError):
        p.concurrency = 3
    with pytest.raises(AttributeError):
        p.waiters = 3
    assert p.queued == 0        # nothing was posted by the failed calls


def test_close():
    p = Port(1)
    assert not p.closed
    p.post(1)
    p.close()
    p.close()                   # idempotent
    assert p.closed
    with pytest.raises(PortClosedError):
        p.get()                 # closed: even queued packets are gone
    with pytest.raises(PortClosedError):
        p.get(timeout=0)
    with pytest.raises(PortClosedError):
        p.get_many(3)
    with pytest.raises(PortClosedError):
        p.post(2)
    assert issubclass(PortClosedError, RuntimeError)
    p.leave()                   # harmless


def test_context_manager():
    with Port(1) as p:
        assert isinstance(p, Port)
        assert not p.closed
    assert p.closed
    with pytest.raises(ZeroDivisionError):
        with Port(1) as p:
            1 / 0
    assert p.closed


def test_repr_and_docs():
    p = Port(3)
    assert "concurrency=3" in repr(p)
    assert Port.get.__text_signature__ == "($self, /, timeout=None)"
    assert Port.__doc__.startswith("A completion port")
    assert PortClosedError.__doc__


# ---- threads -------------------------------------------------------------


def test_close_wakes_all_waiters(workers):
    p = Port(4)
    ws = [workers(p, f"w{i}") for i in range(4)]
    for i, w in enumerate(ws):
        start_waiting(w, p, i, "get" if i % 2 else "get_many", *(
            () if i % 2 else (3,)))
    assert p.waiters == 4
    p.close()
    for w in ws:
        with pytest.raises(PortClosedError):
            w.result()
    assert p.waiters == 0


def test_waiter_woken_by_post(workers):
    p = Port(2)
    w = workers(p)
    start_waiting(w, p, 0, "get", 10.0)
    p.post(5, 6, "v")
    assert w.result() == (5, 6, "v")
    assert p.running == 1 and p.waiters == 0


def test_lifo_wakeup(workers):
    p = Port(8)
    a, b, c = workers(p, "A"), workers(p, "B"), workers(p, "C")
    start_waiting(a, p, 0)
    start_waiting(b, p, 1)
    start_waiting(c, p, 2)
    p.post(1)
    # The decision is made inside post(): C is already off the stack.
    assert p.waiters == 2 and p.queued == 0
    assert c.result().key == 1
    assert b.idle() and a.idle()
    p.post(2)
    assert b.result().key == 2
    assert a.idle()
    # C waits again: it is now the most recent waiter and goes before A.
    start_waiting(c, p, 1)
    p.post(3)
    assert c.result().key == 3
    p.post(4)
    assert a.result().key == 4
    assert p.waiters == 0


def test_timed_out_waiter_leaves_stack_in_place(workers):
    p = Port(8)
    a, b = workers(p, "A"), workers(p, "B")
    start_waiting(a, p, 0, "get", 20.0)
    b.start("get", 0.01)
    with pytest.raises(TimeoutError):
        b.result()
    assert p.waiters == 1
    p.post(1)
    assert a.result().key == 1


def test_concurrency_bound(workers):
    p = Port(1)
    a, b = workers(p, "A"), workers(p, "B")
    p.post(1)
    a.start("get")
    assert a.result().key == 1
    assert p.running == 1       # A runs until it waits again or leaves
    start_waiting(b, p, 0)
    p.post(2)
    p.post(3)
    # A still runs: the surplus waiter B stays asleep, packets stay queued.
    assert p.queued == 2 and p.waiters == 1 and p.running == 1
    assert b.idle()
    # A comes back for more: a packet is ready and its slot is free, so A
    # takes it itself without sleeping (B is still asleep).
    a.start("get", 0)
    assert a.result().key == 2
    assert p.queued == 1 and p.waiters == 1 and p.running == 1
    # A leaves: the freed slot hands the queued packet to B.
    a.start("leave")
    assert a.result() is None
    assert b.result().key == 3
    assert p.queued == 0 and p.waiters == 0 and p.running == 1


def test_concurrency_two(workers):
    p = Port(2)
    a, b, c = workers(p, "A"), workers(p, "B"), workers(p, "C")
    start_waiting(a, p, 0)
    start_waiting(b, p, 1)
    start_waiting(c, p, 2)
    p.post(1)
    p.post(2)
    assert p.running == 2 and p.waiters == 1 and p.queued == 0
    assert c.result().key == 1
    assert b.result().key == 2
    p.post(3)
    assert p.queued == 1 and p.waiters == 1
    assert a.idle()
    # C waits again: it stops counting, takes the queued packet at once.
    c.start("get")
    assert c.result().key == 3
    assert p.running == 2 and p.waiters == 1
    b.start("leave")
    b.result()
    assert p.running == 1
    p.post(4)
    assert a.result().key == 4
    assert p.running == 2


def test_batch_get_in_thread(workers):
    p = Port(1)
    a, b = workers(p, "A"), workers(p, "B")
    p.post(0)
    a.start("get")
    assert a.result().key == 0
    start_waiting(b, p, 0, "get_many", 10)
    for i in range(1, 4):
        p.post(i)
    assert p.queued == 3 and b.idle()
    a.start("leave")
    a.result()
    # The hand-off gives B everything queued at once (up to max).
    assert [pk.key for pk in b.result()] == [1, 2, 3]
    assert p.queued == 0
    # A batch waiter woken by a single post gets at least that packet.
    b.start("leave")
    b.result()
    start_waiting(b, p, 0, "get_many", 5, 10.0)
    p.post(9)
    assert [pk.key for pk in b.result()] == [9]


def test_get_many_limited_by_max(workers):
    p = Port(1)
    a, b = workers(p, "A"), workers(p, "B")
    p.post(0)
    a.start("get")
    a.result()
    start_waiting(b, p, 0, "get_many", 2)
    for i in range(1, 6):
        p.post(i)
    a.start("leave")
    a.result()
    assert [pk.key for pk in b.result()] == [1, 2]
    assert p.queued == 3


def test_many_threads_stress(workers):
    """Every packet is delivered exactly once, whatever the interleaving."""
    p = Port(3)
    got = []
    lock = threading.Lock()

    def consume():
        while True:
            try:
                batch = p.get_many(7)
            except PortClosedError:
                return
            with lock:
                got.extend(pk.key for pk in batch)

    threads = [threading.Thread(target=consume) for _ in range(6)]
    for t in threads:
        t.start()
    n = 20000
    for i in range(n):
        p.post(i, value=i)
    wait_until(lambda: len(got) == n, "all packets consumed")
    p.close()
    for t in threads:
        t.join(DEADLINE)
        assert not t.is_alive()
    assert sorted(got) == list(range(n))


# ---- signals ---------------------------------------------------------------


class Interrupted(Exception):
    pass


def _signal_main_when_waiting(port, count):
    wait_until(lambda: port.waiters == 1, "main thread waiting")
    os.kill(os.getpid(), signal.SIGUSR1)
    wait_until(lambda: count, "handler ran")


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="needs the main thread")
def test_signal_interrupts_main_thread_get():
    p = Port(1)
    count = []

    def handler(signum, frame):
        count.append(signum)
        raise Interrupted

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        t = threading.Thread(target=_signal_main_when_waiting,
                             args=(p, count))
        t.start()
        with pytest.raises(Interrupted):
            p.get()             # no timeout: only the signal ends it
        t.join(DEADLINE)
        assert not t.is_alive()
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert p.waiters == 0 and p.running == 0


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="needs the main thread")
def test_signal_handler_that_returns_resumes_wait():
    p = Port(1)
    count = []

    def handler(signum, frame):
        count.append(signum)

    def poster():
        _signal_main_when_waiting(p, count)
        # The main thread goes on waiting after the handler (PEP 475).
        wait_until(lambda: p.waiters == 1, "main thread waiting again")
        p.post(42)

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        t = threading.Thread(target=poster)
        t.start()
        assert p.get(timeout=DEADLINE).key == 42
        t.join(DEADLINE)
        assert not t.is_alive()
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert count == [signal.SIGUSR1]


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="needs the main thread")
def test_interrupted_get_requeues_handed_packets():
    # The handler runs while the main thread's wait keeps its place on the
    # stack, so its first post is handed to that very wait; the handler then
    # raises and the packet must go back to the front of the queue.
    p = Port(1)
    count = []
    state = []

    def handler(signum, frame):
        count.append(signum)
        p.post(1)
        state.append((p.waiters, p.running, p.queued))
        p.post(2)
        raise Interrupted

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        t = threading.Thread(target=_signal_main_when_waiting,
                             args=(p, count))
        t.start()
        with pytest.raises(Interrupted):
            p.get()
        t.join(DEADLINE)
        assert not t.is_alive()
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert state == [(0, 1, 0)]     # handed to the interrupted wait
    assert p.running == 0 and p.waiters == 0 and p.queued == 2
    assert [pk.key for pk in p.get_many(5, 0)] == [1, 2]


# ---- threads that exit -----------------------------------------------------


def run_thread(fn):
    """Run fn in a new thread, join it and return what it returned (or
    raise what it raised)."""
    out = []

    def body():
        try:
            out.append(("ok", fn()))
        except BaseException as e:  # noqa: BLE001 - re-raised in the test
            out.append(("err", e))

    t = threading.Thread(target=body)
    t.start()
    t.join(DEADLINE)
    assert not t.is_alive()
    kind, val = out[0]
    if kind == "err":
        raise val
    return val


@contextlib.contextmanager
def alive_after(fn):
    """Run fn in a new thread that then stays alive, doing nothing else,
    until the with block ends; join it then.  Yields what fn returned."""
    out = []
    done = threading.Event()
    release = threading.Event()

    def body():
        try:
            out.append(fn())
        finally:
            done.set()
        release.wait(DEADLINE)

    t = threading.Thread(target=body)
    t.start()
    try:
        assert done.wait(DEADLINE)
        assert out, "fn raised in the thread"
        yield out[0]
    finally:
        release.set()
        t.join(DEADLINE)
    assert not t.is_alive()


def test_exited_threads_free_their_slots(workers):
    # Fails without the fix: the two exited threads keep both slots, so C's
    # get() times out with a packet queued.  A and B run at the same time
    # and C lives throughout, so the three have distinct pthread_t ids (a new
    # thread may reuse an exited thread's id, and before the fix it then
    # took over that thread's stale slot, which would hide the bug).
    p = Port(2)
    c = workers(p, "C")
    both_took = threading.Barrier(2, timeout=DEADLINE)
    keys = []

    def take_then_exit():
        keys.append(p.get(timeout=DEADLINE).key)
        both_took.wait()

    p.post(1)
    p.post(2)
    threads = [threading.Thread(target=take_then_exit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
        assert not t.is_alive()
    assert sorted(keys) == [1, 2]
    p.post(3)
    c.start("get", DEADLINE / 2)
    assert c.result().key == 3
    # On CPython < 3.13 join() can return just before the OS thread has
    # ended (and freed its slot): wait for the condition, not a time.
    wait_until(lambda: p.running == 1, "exited threads leave")
    assert p.waiters == 0 and p.queued == 0


def test_exit_hands_queued_packet_to_waiter(workers):
    p = Port(1)
    b = workers(p, "B")
    p.post(1)
    with alive_after(lambda: p.get().key) as key:
        assert key == 1 and p.running == 1
        start_waiting(b, p, 0, "get", DEADLINE)
        p.post(2)
        assert p.queued == 1 and b.idle()     # the slot is still taken
    # The exiting thread's slot goes to the waiter, as leave() would give it.
    assert b.result().key == 2
    assert p.running == 1 and p.queued == 0


def test_exit_after_leave_and_after_timeout():
    p = Port(1)
    p.post(1)

    def take_leave():
        p.get()
        p.leave()               # the exit finds nothing more to free

    run_thread(take_leave)
    assert p.running == 0
    p.post(2)
    assert p.get(0).key == 2    # this (main) thread now runs
    with pytest.raises(TimeoutError):
        run_thread(lambda: p.get(timeout=0))
    # The thread that timed out did not count as running: the main thread
    # still does.
    assert p.running == 1
    p.leave()
    assert p.running == 0


def test_exit_frees_slot_in_every_port():
    ports = [Port(1) for _ in range(3)]
    for i, p in enumerate(ports):
        p.post(i)

    def take_all():
        return [p.get(0).key for p in ports]

    assert run_thread(take_all) == [0, 1, 2]
    for p in ports:
        wait_until(lambda: p.running == 0, "exited thread leaves")


def test_port_deallocated_before_thread_exits():
    # The exiting thread leaves a port whose Python object is gone: the port
    # core lives on until that last thread has left (no use after free;
    # meaningful under the ASan build).
    class Value:
        pass

    v = Value()
    ref = weakref.ref(v)
    box = [Port(1)]
    box[0].post(1)
    box[0].post(2, value=v)
    del v
    # box.pop(): the thread keeps no reference to the Port once fn returns.
    with alive_after(lambda: box.pop().get().key) as key:
        assert key == 1
        gc.collect()
        assert ref() is None    # the Port was deallocated: values dropped
    # Ports created and used after that are unaffected.
    p = Port(1)
    p.post(3)
    assert run_thread(p.get).key == 3
    wait_until(lambda: p.running == 0, "exited thread leaves")


def test_many_short_lived_threads():
    # Each thread takes a packet and exits without leave(): with
    # concurrency=1 every one of them needs the slot the previous freed.
    p = Port(1)
    for i in range(50):
        p.post(i)
        assert run_thread(lambda: p.get(timeout=DEADLINE)).key == i
