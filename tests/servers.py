"""Real servers for the HTTP tests: apps in background threads, sidecars in subprocesses.

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadedApp:
    """Serve an aiohttp app from its own event loop in a daemon thread."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            server = site._server
            assert server is not None and server.sockets
            self.port = server.sockets[0].getsockname()[1]

        try:
            self.loop.run_until_complete(start())
        except BaseException as exc:  # surface start-up errors to the test
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    def start(self) -> ThreadedApp:
        self._thread.start()
        self._started.wait(60)
        if self._error is not None:
            raise self._error
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop and return its result."""
        async def wrap() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(30)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


def wait_ready(url: str, timeout: float = 180.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready within {timeout}s")


class SidecarProcess:
    """``python -m semcache serve`` in a subprocess (restart, SIGKILL, SIGTERM tests)."""

    def __init__(self, upstream: str, data_dir: Path, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        args = [sys.executable, "-m", "semcache", "serve", "--upstream", upstream, "--host",
                "127.0.0.1", "--port", str(self.port), "--data-dir", str(data_dir), *extra]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.log = data_dir.parent / f"sidecar-{self.port}.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log_file,
                                     stderr=subprocess.STDOUT)
        wait_ready(self.url, proc=self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig: int | None = None, timeout: float = 60) -> int:
        import signal as _signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or _signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log_file.close()
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace")
