"""Build and run the standalone C drivers under AddressSanitizer and UBSan:
tests/c/backend_test.c against each I/O engine, tests/c/core_test.c (the
core with a C dispatch, no Python) on each, tests/c/slab_test.c (the
connection pool), tests/c/http_test.c (the HTTP/1.1 request parser),
tests/c/resp_test.c (the RESP framer and encoder).  They build from the C sources beside tests/ (src/, in a
checkout or the sdist), not from the installed extension."""

import functools
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import TREE, needs_tree

pytestmark = [pytest.mark.timeout(120), needs_tree("src", "tests/c")]

SRC = TREE / "src"
DRIVER = TREE / "tests" / "c" / "backend_test.c"
CORE_DRIVER = TREE / "tests" / "c" / "core_test.c"
SLAB_DRIVER = TREE / "tests" / "c" / "slab_test.c"
HTTP_DRIVER = TREE / "tests" / "c" / "http_test.c"
RESP_DRIVER = TREE / "tests" / "c" / "resp_test.c"
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
ENGINE_SOURCES = {"epoll": SRC / "io" / "epoll.c", "uring": SRC / "io" / "uring.c"}
# What an engine links with besides itself (the ring; the file thread pool
# and the calls every engine shares).
ENGINE_DEPS = {"epoll": [], "uring": [SRC / "io" / "ring.c"]}
IO_COMMON = [SRC / "io" / "common.c", SRC / "io" / "pool.c"]


@pytest.fixture(params=["epoll", "uring"])
def engine(request):
    return request.param


@functools.cache
def _gcc_sanitizes(gcc):
    """Whether `gcc` links a program with ASan and UBSan (not on musl)."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.c")
        with open(probe, "w") as f:
            f.write("int main(void) { return 0; }\n")
        r = subprocess.run([gcc, *SANITIZE, probe, "-o", probe + ".out"],
                           capture_output=True, text=True)
    return r.returncode == 0


def _build_and_run(sources, args, tmp_path, defines=()):
    """Compile `sources` with ASan+UBSan and run the result; returns the
    CompletedProcess (LSan is dropped where the sandbox refuses ptrace)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found")
    if not _gcc_sanitizes(gcc):
        pytest.skip("gcc here cannot link with AddressSanitizer and UBSan")
    exe = tmp_path / sources[0].stem
    cmd = [gcc, "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror",
           "-O1", "-g", "-fno-omit-frame-pointer", *SANITIZE,
           *(f"-D{d}" for d in defines),
           "-I", str(SRC), *map(str, sources), "-o", str(exe), "-pthread"]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, f"build failed:\n{' '.join(cmd)}\n{build.stderr}"

    env = dict(os.environ)
    # The driver links its own sanitizer runtime: a runtime preloaded into
    # the test run (CI's ASan or TSan step) must not be loaded beside it.
    env.pop("LD_PRELOAD", None)
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    run = subprocess.run([str(exe), *args], capture_output=True, text=True,
                         timeout=110, env=env)
    if "LeakSanitizer has encountered a fatal error" in run.stderr:
        # LSan needs ptrace, which some sandboxes refuse: keep ASan's
        # memory error checks, drop the leak check.
        env["ASAN_OPTIONS"] = "detect_leaks=0"
        run = subprocess.run([str(exe), *args], capture_output=True,
                             text=True, timeout=110, env=env)
    return run


def _driver(engine, tmp_path, defines=()):
    # Link epoll.c always (the driver's table names it); uring.c when
    # tested.
    sources = [DRIVER, ENGINE_SOURCES["epoll"], *IO_COMMON]
    if engine == "uring":
        sources += [ENGINE_SOURCES["uring"], *ENGINE_DEPS["uring"]]
    run = _build_and_run(sources, [engine], tmp_path, defines)
    if run.returncode == 77:
        pytest.skip(f"{engine}: {run.stdout.strip() or 'unavailable'}")
    assert run.returncode == 0, (
        f"{engine} driver exited {run.returncode}\n"
        f"--- stdout ---\n{run.stdout}\n--- stderr ---\n{run.stderr}")


def test_backend_driver(engine, tmp_path):
    _driver(engine, tmp_path)


# The io_uring engine's fallbacks for older kernels, forced at compile time
# (uring.c): single-shot accept and receive, cancel by user_data, no
# DEFER_TASKRUN, file operations on the thread pool.
@pytest.mark.parametrize("switch", [
    "IOCP_URING_NO_MULTISHOT", "IOCP_URING_NO_CANCEL_FD",
    "IOCP_URING_NO_DEFER_TASKRUN", "IOCP_URING_NO_FILE_OPS"])
def test_uring_fallbacks(switch, tmp_path):
    _driver("uring", tmp_path, [switch])


def test_core_driver(engine, tmp_path):
    """The core without Python: core_test.c's C dispatch on each engine."""
    _core_driver(engine, tmp_path)


def test_core_linger_has_its_own_timer(engine, tmp_path):
    """A graceful close whose peer never sends its FIN ends LINGER_MS after
    our FIN, on a timer of its own: built with a short LINGER_MS and a sweep
    that never comes (SWEEP_MS ten minutes), the connections must close
    after LINGER_MS and well within LINGER_MS + 10 s.  (Before, the linger
    was checked by the sweep, once a second: a 2 s linger took up to 3 s.)"""
    _core_driver(engine, tmp_path, ["LINGER_MS=300", "SWEEP_MS=600000"])


def _core_driver(engine, tmp_path, defines=()):
    sources = [CORE_DRIVER, *sorted((SRC / "core").glob("*.c")),
               *sorted((SRC / "io").glob("*.c")), SRC / "lib" / "framing.c",
               SRC / "lib" / "slab.c", SRC / "lib" / "ktls.c", SRC / "lib" / "http.c",
               SRC / "lib" / "http_out.c", SRC / "lib" / "resp.c"]
    run = _build_and_run(sources, [engine], tmp_path, defines)
    if run.returncode == 77:
        pytest.skip(f"{engine}: {run.stdout.strip() or 'unavailable'}")
    assert run.returncode == 0 and f"core {engine}: ok" in run.stdout, (
        f"core driver exited {run.returncode}\n"
        f"--- stdout ---\n{run.stdout}\n--- stderr ---\n{run.stderr}")


def test_slab_pool(tmp_path):
    run = _build_and_run([SLAB_DRIVER], [], tmp_path)
    assert run.returncode == 0 and "slab: ok" in run.stdout, (
        f"slab driver exited {run.returncode}\n{run.stdout}\n{run.stderr}")


def test_http_parser(tmp_path):
    """The pure C parser: guard pages, whole versus a byte at a time,
    linear work, de-chunking in place, mutations (tests/c/http_test.c)."""
    run = _build_and_run([HTTP_DRIVER, SRC / "lib" / "http.c"], [], tmp_path)
    assert run.returncode == 0 and "http: ok" in run.stdout, (
        f"http driver exited {run.returncode}\n{run.stdout}\n{run.stderr}")


def test_resp(tmp_path):
    """src/lib/resp.c alone: no rescans (bytes searched, counted), NEED for
    a big bulk, deep nesting refused, encoder sizes."""
    run = _build_and_run([RESP_DRIVER, SRC / "lib" / "resp.c"], [], tmp_path)
    assert run.returncode == 0 and "resp: ok" in run.stdout, (
        f"resp driver exited {run.returncode}\n{run.stdout}\n{run.stderr}")
