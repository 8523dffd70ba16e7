# SPDX-License-Identifier: Apache-2.0
"""A relay between a migration's source and destination, for freezing a stream on purpose:

    python3 relay.py LISTEN_PATH TARGET_PATH [RATE]

accepts one connection on the Unix socket LISTEN_PATH, connects to TARGET_PATH, and copies
bytes both ways; RATE (bytes per second, default unlimited) caps the source-to-destination
direction, so that a postcopy lasts long enough to be frozen. SIGSTOP freezes it (the stream
hangs with bytes in flight, as a network that stops answering), SIGKILL breaks it."""

import os
import socket
import sys
import threading
import time


def pump(src, dst, rate):
    window, sent = time.monotonic(), 0
    try:
        while True:
            data = src.recv(16384 if rate is None else min(16384, max(4096, rate // 20)))
            if not data:
                break
            dst.sendall(data)
            if rate is not None:
                sent += len(data)
                ahead = sent / rate - (time.monotonic() - window)
                if ahead > 0:
                    time.sleep(ahead)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main():
    listen_path, target_path = sys.argv[1], sys.argv[2]
    rate = int(sys.argv[3]) if len(sys.argv) > 3 else None
    try:
        os.unlink(listen_path)
    except FileNotFoundError:
        pass
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(listen_path)
    lsock.listen(1)
    a, _ = lsock.accept()
    b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    b.connect(target_path)
    t = threading.Thread(target=pump, args=(b, a, None), daemon=True)
    t.start()
    pump(a, b, rate)
    t.join()


if __name__ == "__main__":
    main()
