"""``python -m loadtests.bench.http_clients``: CPU per outbound POST, httpx against aiohttp.

Why the worker's calls (webhook deliveries, saga steps) use aiohttp: a delivering worker
spent a fifth to a third of its CPU in httpx. Both clients POST the same body to one
aiohttp server on 127.0.0.1 in this process, ``--concurrency`` at a time, as the worker's
jobs do; the figure is this process's CPU time per request (the server's share included,
the same on both sides), measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time

import aiohttp
import httpx
from aiohttp import web

BODY = b'{"event": "' + b"x" * 400 + b'"}'


async def _serve() -> tuple[web.AppRunner, str]:
    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return runner, f"http://127.0.0.1:{sock.getsockname()[1]}/hook"


async def _measure(post: object, requests: int, concurrency: int) -> tuple[float, float]:
    assert callable(post)
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            await post()

    for _ in range(50):  # connections and caches warm
        await post()
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(requests)))
    return (time.process_time() - cpu) / requests * 1e6, time.perf_counter() - wall


async def main(requests: int, concurrency: int) -> None:
    runner, url = await _serve()
    try:
        async with httpx.AsyncClient() as client:

            async def with_httpx() -> None:
                async with client.stream("POST", url, content=BODY) as response:
                    async for _ in response.aiter_raw():
                        pass

            httpx_cpu, httpx_wall = await _measure(with_httpx, requests, concurrency)
        async with aiohttp.ClientSession() as session:

            async def with_aiohttp() -> None:
                async with session.post(url, data=BODY, allow_redirects=False) as response:
                    await response.content.read(1024)

            aio_cpu, aio_wall = await _measure(with_aiohttp, requests, concurrency)
    finally:
        await runner.cleanup()
    print(f"## {requests} POSTs, {concurrency} at a time")
    print()
    print("| client | CPU µs per request | wall s |")
    print("|---|---|---|")
    print(f"| httpx {httpx.__version__} | {httpx_cpu:.0f} | {httpx_wall:.2f} |")
    print(f"| aiohttp {aiohttp.__version__} | {aio_cpu:.0f} | {aio_wall:.2f} |")
    print()
    print(f"aiohttp / httpx CPU: {aio_cpu / httpx_cpu:.2f}")


def cli() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench.http_clients", description=__doc__
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency))


if __name__ == "__main__":
    cli()
