"""Build the iocport._iocport extension from src/**/*.c (metadata: pyproject.toml).

A release build (the default: pip install, wheels) is optimised with
link-time optimisation and carries no debug information (-g0, whatever -g
Python's own CFLAGS add); IOCPORT_DEBUG=1 keeps it (-g), for gdb and perf.
IOCPORT_SANITIZE=1 builds with AddressSanitizer and UBSan;
IOCPORT_SANITIZE=thread builds with ThreadSanitizer (the two cannot be
combined; both keep debug information).  CI runs the test suite on each,
with the sanitizer's runtime preloaded into the uninstrumented python (see
.ci/run).  IOCPORT_WERROR=1 turns warnings into errors.
"""
import glob
import os

from setuptools import Extension, setup

cflags = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-fvisibility=hidden"]
ldflags = ["-pthread"]
if os.environ.get("IOCPORT_WERROR") == "1":
    cflags.append("-Werror")
sanitize = os.environ.get("IOCPORT_SANITIZE", "0")
if sanitize == "0":
    sanitize = ""
elif sanitize == "1":
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
           "-fno-sanitize-recover=undefined"]
elif sanitize == "thread":
    san = ["-fsanitize=thread", "-fno-omit-frame-pointer"]
elif sanitize:
    raise SystemExit(f"IOCPORT_SANITIZE={sanitize!r}: expected 0, 1 or thread")
if sanitize:
    cflags += san + ["-O1", "-g"]
    ldflags += san
else:
    # Link-time optimisation: the core is split into a file per concern,
    # and the dispatch layer reaches it through functions (core.h); LTO
    # inlines across those files what one file used to inline itself.
    cflags += ["-O2", "-flto=auto"]
    ldflags += ["-O2", "-flto=auto"]
    # After Python's CFLAGS (which often hold -g), so this one wins; at the
    # link too, where LTO generates the code.
    debug = ["-g"] if os.environ.get("IOCPORT_DEBUG") == "1" else ["-g0"]
    cflags += debug
    ldflags += debug

setup(
    ext_modules=[
        Extension(
            "iocport._iocport",
            sources=sorted(glob.glob("src/**/*.c", recursive=True)),
            depends=sorted(glob.glob("src/**/*.h", recursive=True)),
            include_dirs=["src"],   # includes name their layer: "io/backend.h"
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
    ],
)
