"""The real aivd servers the load benchmarks drive: an `aivd serve ...` command in a process of its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def aivd_server(args: list[str], port: int, start_timeout_s: float = 60.0, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """`aivd ARGS` (a server listening on 127.0.0.1:`port`) in a subprocess, once it accepts connections; stopped
    on exit. RuntimeError, with the last line the server printed, when it exits or does not listen in time. `env`
    adds to its environment: the way to hand it a secret, which its arguments would show to `ps`."""
    what = "aivd " + " ".join(args[:2])
    with tempfile.TemporaryFile("w+") as log:  # its messages, read back only to say why it did not start
        server = subprocess.Popen([sys.executable, "-m", "aivd.cli.main", *args], stdout=subprocess.DEVNULL, stderr=log,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        last = (log.read().strip().splitlines() or [""])[-1]
                        ended = f"exited with code {server.returncode}" if server.poll() is not None else f"did not start within {start_timeout_s:.0f} s"
                        raise RuntimeError(f"{what} {ended}" + (f": {last}" if last else "")) from None
                    time.sleep(0.2)
            yield server
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
