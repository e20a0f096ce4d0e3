"""An httpx transport that sends each request over QUIC (see quic_client).

The QUIC connection lives on a private event-loop thread, so the synchronous httpx.Client
that Flower's SuperNode uses (from several threads: the worker loop and the heartbeat)
works unchanged. QUIC failures surface as the httpx errors Flower's retry logic already
understands: an unreachable or refusing server is httpx.ConnectError / ConnectTimeout
(a certificate failure says "certificate", which Flower treats as final), a connection
lost mid-request is httpx.ReadError, a late response is httpx.ReadTimeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import httpx

from . import frames
from .quic_client import (
    FleetQuicClient,
    QuicConnectFailed,
    QuicConnectionLost,
    QuicConnectTimeout,
    QuicProtocolError,
    QuicResponseTimeout,
)

# HTTP/1 connection-management headers mean nothing on a QUIC stream.
_HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"})
_NO_TIMEOUT_GUARD = 3600.0  # httpx "no timeout": still never wait forever on a lost reply


async def _cancel_other_tasks() -> None:
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class QuicHttpTransport(httpx.BaseTransport):
    def __init__(self, host: str, port: int, **client_options) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"flq-quic-{host}:{port}", daemon=True)
        self._thread.start()
        self._closed = False
        self.client: FleetQuicClient = self.call(self._make_client(host, port, client_options))

    @staticmethod
    async def _make_client(host: str, port: int, options: dict) -> FleetQuicClient:
        return FleetQuicClient(host, port, **options)

    def call(self, coroutine, timeout: float | None = None):
        """Run a coroutine on the QUIC thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def rebind(self) -> tuple[str, int]:
        """Move the connection to a new local UDP port (connection migration)."""
        return self.call(self.client.rebind())

    def disconnect(self) -> None:
        """Drop the connection, keep the ticket: the next request resumes with 0-RTT."""
        self.call(self.client.disconnect())

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("QUIC transport is closed", request=request)
        timeouts = request.extensions.get("timeout", {})
        connect = timeouts.get("connect") or self.client.settings.handshake_timeout
        read = timeouts.get("read") or _NO_TIMEOUT_GUARD
        path = request.url.raw_path.decode("ascii")
        headers = [
            (k.decode("latin-1").lower(), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.decode("latin-1").lower() not in _HOP_HEADERS
        ]
        body = request.read()
        future = asyncio.run_coroutine_threadsafe(
            self.client.request(request.method, path, headers, body, connect_timeout=connect, read_timeout=read),
            self._loop,
        )
        try:
            # The client enforces both timeouts itself; this outer bound is only a hang guard.
            response = future.result(connect + read + 5.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise httpx.ReadTimeout(f"no response over QUIC within {read} s", request=request) from None
        except QuicConnectTimeout as exc:
            raise httpx.ConnectTimeout(str(exc), request=request) from exc
        except QuicConnectFailed as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except QuicConnectionLost as exc:
            raise httpx.ReadError(str(exc), request=request) from exc
        except QuicResponseTimeout as exc:
            raise httpx.ReadTimeout(str(exc), request=request) from exc
        except QuicProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except frames.FrameError as exc:  # our own request broke a limit: not worth a retry
            raise httpx.LocalProtocolError(f"cannot send over QUIC: {exc}", request=request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=list(response.headers),
            stream=httpx.ByteStream(response.body),  # raw: httpx applies any content-encoding
            request=request,
            extensions={"http_version": frames.ALPN.encode("ascii")},
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.call(self.client.close(), timeout=5.0)
            self.call(_cancel_other_tasks(), timeout=5.0)
        except Exception:  # closing is best effort; the thread goes regardless
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5.0)
        if not self._thread.is_alive():
            self._loop.close()
