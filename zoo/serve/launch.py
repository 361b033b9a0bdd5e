"""Start `zoo serve` in a child process on a free local port and wait until it answers (tests, `zoo bench serve`)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m zoo.cli serve --model ... --port <free>` in its own process group; `stop()` ends the group."""

    def __init__(self, model: str, *args: str, log: str | Path | None = None, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log) if log else None
        out = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - the child's log, open while it runs
        cmd = [sys.executable, "-m", "zoo.cli", "serve", "--model", str(model), "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                     start_new_session=True,
                                     # the child takes Ctrl+C even when this process ignores it (pytest-xdist workers)
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509

    def wait(self, timeout: float = 120.0) -> ServerProcess:
        """Until /health says ok (the model worker is ready); an exited child is an error showing its log."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"zoo serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"zoo serve did not answer /health within {timeout:.0f} s:\n{self.log()}")

    def metadata(self) -> dict:
        with urllib.request.urlopen(self.url + "/metadata", timeout=10) as r:
            return json.load(r)

    def log(self) -> str:
        return self.log_path.read_text()[-4000:] if self.log_path and self.log_path.exists() else "(no log kept)"

    def interrupt(self) -> None:
        """Ctrl+C for the server's process group (the server, its model workers and LitServe's manager)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def stop(self, grace: float = 10.0) -> None:
        self.interrupt()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever is left of the group (a worker that did not stop)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)


def stop_all(servers) -> None:
    """Interrupt every server first, then wait: they shut down in parallel."""
    servers = list(servers)
    for s in servers:
        s.interrupt()
    for s in servers:
        s.stop()
