"""Run ``python -m inferlab.serve`` in the background: for tests, benchmarks and notebooks.

:class:`ServerProcess` starts the server as a subprocess on 127.0.0.1 and a free port,
waits until ``/health`` answers, and stops it with SIGTERM (the server's graceful
shutdown), then SIGKILL if it hangs. It remembers its process id in a small file, so a
notebook re-run (or a restarted kernel) first stops the server an earlier run left
behind: no port stays open.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class ServerProcess:
    """``with ServerProcess("tiny") as server: OpenAI(base_url=server.base_url, ...)``.

    ``args``: more command-line options (``["--api-key", "k"]``, engine options);
    ``name``: the pid file's name (one background server per name).
    """

    def __init__(self, model: str = "tiny", port: int | None = None, args: list[str] | tuple = (),
                 name: str = "default", host: str = "127.0.0.1", env: dict[str, str] | None = None):
        self.model, self.host, self.args, self.name = model, host, list(args), name
        self.port = port or free_port(host)
        self.env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"inferlab-serve-{name}.log"
        self.pid_path = Path(tempfile.gettempdir()) / f"inferlab-serve-{name}.pid"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What ``openai.OpenAI(base_url=...)`` takes."""
        return f"{self.url}/v1"

    def start(self, timeout: float = 180.0) -> ServerProcess:
        stop_stale(self.pid_path)
        cmd = [sys.executable, "-m", "inferlab.serve", "--model", self.model, "--host", self.host,
               "--port", str(self.port), *self.args]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.pid_path.write_text(str(self.proc.pid))
        atexit.register(self.stop)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the server did not answer /health within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.is_file() else ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.pid_path.unlink(missing_ok=True)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_stale(pid_path: Path) -> None:
    """Stop the server an earlier run recorded in ``pid_path``, if it still runs (and is one of ours)."""
    if not pid_path.is_file():
        return
    try:
        pid = int(pid_path.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if Path(f"/proc/{pid}").exists() else b""
        if b"inferlab.serve" in cmdline or (not Path("/proc").exists() and pid > 0):
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)
    except (ValueError, ProcessLookupError, PermissionError):
        pass
    pid_path.unlink(missing_ok=True)
