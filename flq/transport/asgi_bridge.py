"""Run one complete HTTP request through an ASGI app, outside any HTTP server.

The QUIC server uses this to hand a Fleet request to the very FastAPI app that uvicorn
serves, so routing, node auth, protobuf translation, errors and state are the app's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]
OnHead = Callable[[int, list[tuple[str, str]]], None]
OnBody = Callable[[bytes, bool], None]


def http_scope(
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    *,
    client: tuple[str, int] | None,
    server: tuple[str, int] | None,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    raw_path = path.encode("ascii")
    path_only, _, query = raw_path.partition(b"?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path_only.decode("ascii"),
        "raw_path": path_only,
        "query_string": query,
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": client,
        "server": server,
        "state": dict(state or {}),  # a shallow copy per request, as uvicorn does
        "extensions": {},
    }


async def call_asgi(
    app: ASGIApp, scope: dict[str, Any], body: bytes, *, on_head: OnHead, on_body: OnBody, disconnected: asyncio.Event
) -> None:
    """Feed `body` to the app, report its response through `on_head` / `on_body`.

    `disconnected` is set by the caller when the peer goes away; the app then sees
    `http.disconnect`, exactly as behind uvicorn. If the app fails before responding,
    a bare 500 is reported so the peer is never left waiting.
    """
    body_sent = False
    started = False
    finished = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal started, finished
        if disconnected.is_set() or finished:
            return
        if message["type"] == "http.response.start":
            started = True
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
            on_head(int(message["status"]), headers)
        elif message["type"] == "http.response.body":
            more = bool(message.get("more_body", False))
            finished = not more
            on_body(bytes(message.get("body", b"")), more)

    try:
        await app(scope, receive, send)
    except Exception:
        if not started and not disconnected.is_set():
            on_head(500, [("content-type", "text/plain")])
            on_body(b"Internal Server Error", False)
            finished = True
        raise
    finally:
        if started and not finished and not disconnected.is_set():
            on_body(b"", False)  # the app returned without closing its body
