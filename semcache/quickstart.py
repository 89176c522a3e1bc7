"""``semcache quickstart``: the sidecar in front of the bundled fake upstream, on 127.0.0.1.

A newcomer can ``curl`` it at once; pointing at a real router is one flag
(``semcache serve --upstream https://api.openai.com``).  Runs until SIGINT/SIGTERM and
shuts both servers down cleanly.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import TextIO

from aiohttp import web

from .fake_upstream import make_fake_app
from .settings import Settings
from .web_app import make_app
from .web_runtime import RUNTIME

__all__ = ["run_quickstart"]

USAGE = """\
semcache is listening on http://{host}:{port}  (fake upstream on {upstream})
data directory: {data_dir}

Try it (the second call is a cache hit, the third a semantic hit):

  curl -s -D - http://{host}:{port}/v1/chat/completions -H 'Content-Type: application/json' \\
    -H 'Authorization: Bearer sk-demo' \\
    -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"What is the capital of France?"}}]}}'
  (same again)
  ... "content":"what is the capital city of France?" ...

Look for X-Semcache-Status / X-Semcache-Match / X-Semcache-Similarity in the headers.

From Python, change only the base URL of your client:

  from openai import OpenAI
  client = OpenAI(base_url="http://{host}:{port}/v1", api_key="sk-demo")

Against a real router:  semcache serve --upstream https://api.openai.com
Stop with Ctrl-C.
"""


async def _run(settings: Settings, fake_port: int, out: TextIO) -> None:
    fake = web.AppRunner(make_fake_app(), access_log=None)
    await fake.setup()
    await web.TCPSite(fake, "127.0.0.1", fake_port).start()
    app = make_app(settings.replace(upstream=f"http://127.0.0.1:{fake_port}"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    print(USAGE.format(host=settings.host, port=settings.port, data_dir=settings.data_dir,
                       upstream=f"http://127.0.0.1:{fake_port}"), file=out, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while app[RUNTIME].cache is None and app[RUNTIME].load_error is None and not stop.is_set():
        await asyncio.sleep(0.1)
    cache = app[RUNTIME].cache
    if cache is not None:
        print(f"ready: {cache.embedder.name}", file=out, flush=True)
    await stop.wait()
    await runner.cleanup()
    await fake.cleanup()


def run_quickstart(settings: Settings, *, fake_port: int = 4000, out: TextIO | None = None) -> int:
    asyncio.run(_run(settings, fake_port, out or sys.stdout))
    return 0
