#!/bin/sh
# cibuildwheel's before-all ([tool.cibuildwheel.linux] in pyproject.toml):
# runs once in each manylinux or musllinux container, before its wheels
# are built.  Not run by .ci/run (this machine has no containers).
#
# The io_uring engine needs <linux/io_uring.h> from Linux 6.1 or later
# (provided buffer rings, multishot receive, IORING_SETUP_DEFER_TASKRUN).
# The image's own header is used when it is recent enough; otherwise Linux
# 6.1's io_uring.h (with the time_types.h it includes) goes to
# /opt/iocport-kernel-headers/include, which the CFLAGS set beside this
# script's call put ahead of /usr/include.
set -eu
if command -v apk >/dev/null 2>&1; then
    apk add --no-cache linux-headers        # musllinux (Alpine)
fi
if grep -qs IORING_SETUP_DEFER_TASKRUN /usr/include/linux/io_uring.h; then
    exit 0
fi
dest=/opt/iocport-kernel-headers/include/linux
mkdir -p "$dest"
base=https://raw.githubusercontent.com/torvalds/linux/v6.1/include/uapi/linux
for h in io_uring.h time_types.h; do
    curl -fsSL "$base/$h" -o "$dest/$h"
done
grep -q IORING_SETUP_DEFER_TASKRUN "$dest/io_uring.h"
