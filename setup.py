"""Build the iocport._iocport extension from src/**/*.c (metadata: pyproject.toml).

IOCPORT_SANITIZE=1 builds with AddressSanitizer and UBSan (CI runs the test
suite on such a build); IOCPORT_WERROR=1 turns warnings into errors.
"""
import glob
import os

from setuptools import Extension, setup

cflags = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-fvisibility=hidden"]
ldflags = ["-pthread"]
if os.environ.get("IOCPORT_WERROR") == "1":
    cflags.append("-Werror")
if os.environ.get("IOCPORT_SANITIZE") == "1":
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
           "-fno-sanitize-recover=undefined"]
    cflags += san + ["-O1", "-g"]
    ldflags += san
else:
    cflags += ["-O2"]

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
