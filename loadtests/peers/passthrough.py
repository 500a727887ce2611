"""A bare Python pass-through, the floor a Python gateway is compared with: aiohttp's server and client, uvloop.

It forwards the body of every POST to the upstream as is and relays the answer chunk by chunk (so streams stay
streams), with one shared keep-alive connection pool. No parsing, routing, metrics or evaluation: the issue's
"bare aiohttp pass-through" reference point, measured in the same run as the gateway.

    python loadtests/peers/passthrough.py --upstream http://127.0.0.1:PORT --port N
"""

from __future__ import annotations

import argparse

import aiohttp
import uvloop
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def make_app(upstream: str) -> web.Application:
    async def start(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        app["client"] = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def stop(app: web.Application) -> None:
        await app["client"].close()

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def forward(request: web.Request) -> web.StreamResponse:
        client: aiohttp.ClientSession = request.app["client"]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with client.post(upstream + request.path, data=await request.read(), headers=headers) as answer:
            content_type = answer.headers.get("content-type", "application/json")
            if not content_type.startswith("text/event-stream"):
                return web.Response(
                    body=await answer.read(),
                    status=answer.status,
                    content_type=None,
                    headers={"content-type": content_type},
                )
            response = web.StreamResponse(status=answer.status, headers={"content-type": content_type})
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get("/health", health)
    app.router.add_post("/{path:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(
        make_app(args.upstream.rstrip("/")),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
