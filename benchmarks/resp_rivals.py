"""The RESP rival for ``python -m iocport bench --resp``: Debian's
redis-server, run as http_rivals.py runs the HTTP rivals.

    python benchmarks/resp_rivals.py redis [--appendfsync always|everysec|no] [opts]

    opts: --host 127.0.0.1 --port 6379 (0: a free port)

redis-server runs as a child process in the foreground with persistence
off (``--save "" --appendonly no``), or with ``--appendfsync`` an
append-only file (``--appendonly yes --appendfsync ...``, still no RDB
snapshots), its directory (and so its files) a temporary one removed at
exit; once it accepts connections this prints ``listening on HOST:PORT
(what)``; SIGINT or SIGTERM stop the child and exit 0.  The benchmark
counts the CPU time of this process and every descendant (this one only
waits; redis-server's own threads are in its process's figures).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

if __package__:   # imported from the installed package (iocport.benchmarks)
    from .http_rivals import run_child
else:             # run as a script, beside http_rivals.py
    from http_rivals import run_child  # type: ignore[no-redef]


def redis_argv(redis: str, host: str, port: int, directory: str,
               appendfsync: str | None) -> list[str]:
    """redis-server's command line: in the foreground, logging warnings to
    stdout, its files in `directory`, persistence off, or with
    `appendfsync` an append-only file synced that way."""
    aof = (["--appendonly", "yes", "--appendfsync", appendfsync] if appendfsync
           else ["--appendonly", "no"])
    return [redis, "--bind", host, "--port", str(port), "--daemonize", "no",
            "--protected-mode", "no", "--dir", directory, "--logfile", "",
            "--loglevel", "warning", "--save", "", *aof]


def redis_version(redis: str) -> str:
    """"redis-server 7.0.15", from its --version."""
    r = subprocess.run([redis, "--version"], capture_output=True, text=True)
    words = r.stdout.split()
    version = next((w[2:] for w in words if w.startswith("v=")), "")
    return f"redis-server {version}".strip()


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module's docstring); the exit status."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("kind", choices=("redis",))
    p.add_argument("--appendfsync", choices=("always", "everysec", "no"), default=None,
                   help="an append-only file, synced this way (default: persistence off)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6379, help="0: a free port")
    args = p.parse_args(argv)
    redis = shutil.which("redis-server")
    if redis is None:
        sys.stderr.write("resp_rivals: redis-server is not installed: "
                         "apt-get install redis-server\n")
        return 1
    what = (f"appendonly yes, appendfsync {args.appendfsync}" if args.appendfsync
            else "persistence off")

    def make_argv(port: int, tmp: str) -> tuple[list[str], str]:
        return (redis_argv(redis, args.host, port, tmp, args.appendfsync),
                f"{redis_version(redis)}, {what}")

    return run_child("resp_rivals", "redis", args.host, args.port, make_argv)


if __name__ == "__main__":
    sys.exit(main())
