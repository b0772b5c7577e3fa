"""User errors on the command line: each command is run in a subprocess and
must print exactly one line on stderr that says what was wrong, no
traceback, and exit 2 for a usage error (as argparse does) or 1 for a
failure the user can fix.  Also ``--version``, the demo under a load that
does not fit a socket buffer, and the CLI's logging setup."""
import platform
import socket
import subprocess
import sys

import pytest

import iocport
from conftest import CHILD_CWD, DEADLINE, REFUSE_URING, REFUSE_URING_MACHINES, child_env

pytestmark = pytest.mark.timeout(60)

# Run after REFUSE_URING: the command itself, under the seccomp filter.
EXEC_CLI = ("import os, sys\n"
            "os.execv(sys.executable, [sys.executable, '-m', 'iocport', *sys.argv[1:]])\n")

needs_seccomp = pytest.mark.skipif(
    platform.machine() not in REFUSE_URING_MACHINES,
    reason="the filter uses the io_uring_setup number of x86_64/aarch64")


def run_cli(*args, env=None, refuse_uring=False):
    full_env = child_env(**{"IOCPORT_BACKEND": None, **(env or {})})
    if refuse_uring:
        cmd = [sys.executable, "-c", REFUSE_URING + EXEC_CLI, *args]
    else:
        cmd = [sys.executable, "-m", "iocport", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=DEADLINE,
                          env=full_env, cwd=CHILD_CWD)


def one_line(proc, status, *words):
    """The run exited `status` with one line on stderr holding `words`."""
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ---- usage errors: exit 2 ----------------------------------------------------

@pytest.mark.parametrize("args, option", [
    (["echo", "--port", "0", "--workers", "0"], "--workers"),
    (["echo", "--port", "0", "--workers", "-2"], "--workers"),
    (["echo", "--port", "0", "--workers", "257"], "--workers"),
    (["echo", "--port", "0", "--workers", "two"], "--workers"),
    (["echo", "--port", "70000"], "--port"),
    (["echo", "--port", "-1"], "--port"),
    (["echo", "--port", "0", "--framing", "len3"], "len3"),
    (["echo", "--port", "0", "--backend", "kqueue"], "--backend"),
    (["echo", "--port", "0", "--native", "--store", "x.log"], "--native"),
    (["demo", "--connections", "0"], "--connections"),
    (["demo", "--connections", "-5"], "--connections"),
    (["demo", "--depth", "0"], "--depth"),
    (["demo", "--depth", "-1"], "--depth"),
    (["demo", "--seconds", "0"], "--seconds"),
    (["demo", "--seconds", "-1"], "--seconds"),
    (["demo", "--seconds", "nan"], "--seconds"),
    (["demo", "--size", "-1"], "--size"),
    (["bench", "--seconds", "0"], "--seconds"),
    (["bench", "--sizes", "64,x"], "--sizes"),
    (["bench", "--only", "apache"], "apache"),
    (["bench", "--json", "/nonexistent-dir/figures.json"], "--json"),
    (["frobnicate"], "frobnicate"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_option_is_a_usage_error(args, option, tmp_path):
    line = one_line(run_cli(*args), 2, option)
    assert line.startswith("python -m iocport"), line


@pytest.mark.parametrize("command", [["echo", "--port", "0"], ["demo"], ["bench"]])
def test_bad_backend_variable_is_a_usage_error(command):
    one_line(run_cli(*command, env={"IOCPORT_BACKEND": "bogus"}), 2,
             "IOCPORT_BACKEND", "bogus")


# ---- failures the user can fix: exit 1 --------------------------------------

def test_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(run_cli("echo", "--port", str(port)), 1,
                        f"127.0.0.1:{port}", "Address already in use")
    assert "while attempting" not in line       # said once, by us


def test_unknown_host():
    # .invalid never resolves (RFC 2606)
    one_line(run_cli("echo", "--host", "no-such-host.invalid", "--port", "0"), 1,
             "cannot listen on no-such-host.invalid:0")


def test_store_in_a_missing_directory(tmp_path):
    path = tmp_path / "no-such-dir" / "store.log"
    one_line(run_cli("echo", "--port", "0", "--store", str(path)), 1,
             "--store", str(path), "No such file or directory")


def test_store_that_is_a_directory(tmp_path):
    one_line(run_cli("echo", "--port", "0", "--store", str(tmp_path)), 1,
             "--store", "Is a directory")


@needs_seccomp
@pytest.mark.parametrize("command", [["echo", "--port", "0"], ["demo"]])
def test_uring_refused_hint_is_a_command_line(command):
    line = one_line(run_cli(*command, "--backend", "uring", refuse_uring=True), 1,
                    "io_uring is not available", "--backend epoll")
    assert "backend='epoll'" not in line


@needs_seccomp
def test_uring_refused_through_the_variable():
    one_line(run_cli("echo", "--port", "0", env={"IOCPORT_BACKEND": "uring"},
                     refuse_uring=True), 1,
             "IOCPORT_BACKEND=uring", "io_uring is not available", "IOCPORT_BACKEND=epoll")


@needs_seccomp
def test_uring_refused_auto_still_serves():
    """Not an error: auto falls back to epoll (one log line) and serves."""
    proc = subprocess.Popen(
        [sys.executable, "-c", REFUSE_URING + EXEC_CLI, "echo", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=child_env(IOCPORT_BACKEND="auto"), cwd=CHILD_CWD)
    try:
        line = proc.stdout.readline()
        assert "backend epoll" in line, line
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert err.splitlines() == ["iocport: io_uring unavailable (Operation not permitted); "
                                "using the epoll backend"], err


# ---- the rest -------------------------------------------------------------

def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"iocport {iocport.__version__}\n"


def test_demo_large_messages_deep_pipeline():
    """More in flight than a socket buffer holds: the demo's client queues
    what the kernel does not take and reads the replies meanwhile."""
    proc = run_cli("demo", "--seconds", "0.5", "--connections", "2",
                   "--depth", "8", "--size", "500000")
    assert proc.returncode == 0, proc.stderr
    assert " 0 wrong replies" in proc.stdout, proc.stdout


def test_logging_lets_only_iocport_info_through():
    """The CLI configures the "iocport" logger, not the root: another
    library's INFO lines stay out (matplotlib's font cache, say)."""
    code = ("import logging, sys\n"
            "from iocport.__main__ import main\n"
            "try:\n"
            "    main(['--version'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "logging.getLogger('matplotlib.font_manager').info('other INFO')\n"
            "logging.getLogger('iocport').info('own INFO')\n"
            "logging.getLogger('iocport.sub').info('own child INFO')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=DEADLINE, env=child_env(), cwd=CHILD_CWD)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["iocport: own INFO", "iocport.sub: own child INFO"]
