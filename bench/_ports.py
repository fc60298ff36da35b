"""Loopback ports for the benchmarks that start a server of their own (bench/api.py, live.py)."""

from __future__ import annotations

import socket
import time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, deadline: float) -> None:
    """Return once 127.0.0.1:``port`` accepts connections; raise OSError after ``deadline``
    (a ``time.monotonic()`` value)."""
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
