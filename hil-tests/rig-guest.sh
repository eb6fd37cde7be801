#!/bin/bash
# Stage 2 of hil-tests/rig.sh, PID 1 inside the qemu guest (the host's / over
# 9p read-only under a tmpfs overlay). Mounts the results share, runs the test
# with its output on /dev/ttyS1 (qemu's stdio), prints "RIG-EXIT <rc>" on the
# console and powers off. Not meant to run on a host.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
[ "$$" = 1 ] || { echo "rig-guest.sh runs as the guest's init only" >&2; exit 2; }
mount -t tmpfs tmpfs /run
# /tmp stays the overlay's (tmpfs upper over the host's /tmp): a checkout or
# cache under the host's /tmp stays visible, and what the tests write lands
# in guest memory.
mkdir -p /dev/pts /dev/shm /out
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=262144 out /out
set -a
# shellcheck disable=SC1091 # written by rig.sh into the results share
. /out/env
set +a
mkdir -p "/lib/modules/$KVER"
mount --bind "$KDIR" "/lib/modules/$KVER"
export HOME=/tmp/home XDG_CONFIG_HOME=/tmp/home/.config XDG_STATE_HOME=/tmp/home/.state
mkdir -p "$HOME"

finish() {
  echo "RIG-EXIT $1" > /dev/console
  sync
  echo o > /proc/sysrq-trigger
  sleep 5
}

stty -F /dev/ttyS1 raw -echo 2> /dev/null
rc=0
"$(dirname "$0")/rig-guest-$MODE.sh" > /dev/ttyS1 2>&1 || rc=$?
finish "$rc"
