#!/usr/bin/env python3
"""A paced virtual null-modem cable: two PTYs joined at a fixed byte rate.

    python3 bench/pty_pace.py --mbit 50
    # prints "/dev/pts/A /dev/pts/B" on one line, then carries bytes both
    # ways until it is killed

A raw PTY pair (socat pty,raw,echo=0 pty,raw,echo=0) moves ~100 MB/s on the
bench machine, far above any real serial line; this one caps each direction
at --mbit megabits/s (10^6 bit/s of payload: no start/stop bits), like a
UART at that many baud x 0.8 or a USB CDC-ACM gadget limited by its bus.

It opens two PTYs itself (no socat in between), sets both to raw mode and
keeps both slave ends open, so an end that closes and reopens (a link that
is dropped and retried) finds the cable as it left it. One thread per
direction reads the master of one PTY and writes to the master of the
other, paced by a token bucket (a virtual clock advanced by len/rate per
read; at most --burst-ms of line time goes out back to back, so a
pacer that wakes late catches up without losing rate). Nothing is dropped: when
the reader of an end stops reading, the writes block and the writer of the
other end is held back, like a line with flow control (CDC-ACM over USB
behaves so; a UART without flow control would drop bytes instead).
"""
import argparse
import os
import sys
import threading
import time
import tty


def pump(src: int, dst: int, rate: float, burst: int, chunk: int) -> None:
    vt = time.monotonic()  # when the bytes sent so far are paid for
    while True:
        try:
            data = os.read(src, chunk)
        except OSError:
            return
        if not data:
            return
        now = time.monotonic()
        vt = max(vt, now - burst / rate) + len(data) / rate
        if vt > now:
            time.sleep(vt - now)
        view = memoryview(data)
        while view:
            try:
                n = os.write(dst, view)
            except OSError:
                return
            view = view[n:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--mbit", type=float, default=50.0, help="rate per direction, 10^6 bit/s (default 50)")
    ap.add_argument("--burst-ms", type=float, default=10.0,
                    help="how much line time may go out back to back, ms (default 10: 62500 bytes at 50 Mbit/s)")
    ap.add_argument("--chunk", type=int, default=16384, help="largest read from a PTY master (default 16384)")
    a = ap.parse_args()
    rate = a.mbit * 1e6 / 8  # bytes/s
    burst = max(int(rate * a.burst_ms / 1000), a.chunk)
    ends = []
    for _ in range(2):
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing, 8 bit clean
        ends.append((master, slave, os.ttyname(slave)))
    (m1, _s1, n1), (m2, _s2, n2) = ends
    for src, dst in ((m1, m2), (m2, m1)):
        threading.Thread(target=pump, args=(src, dst, rate, burst, a.chunk), daemon=True).start()
    print(n1, n2, flush=True)
    sys.stdout.close()
    threading.Event().wait()  # until SIGTERM/SIGKILL


if __name__ == "__main__":
    main()
