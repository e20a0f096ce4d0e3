"""A thread with its own event loop that carries packets between TUN devices through link queues.

Each carried direction reads every packet its source device has queued, asks its
``LinkQueue`` when (if ever) to deliver it, and writes it to the other device at that time.
"""

from __future__ import annotations

import asyncio
import os
import threading

from .link import LinkQueue

MAX_PACKET = 65536


class Forwarder:
    def __init__(self, name: str = "netem-forwarder") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)

    def carry(self, src: int, dst: int, queue: LinkQueue) -> None:
        """Carry packets read from ``src`` to ``dst`` through ``queue`` (before ``start``)."""
        self._loop.call_soon(self._loop.add_reader, src, self._pump, src, dst, queue)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def _pump(self, src: int, dst: int, queue: LinkQueue) -> None:
        while True:
            try:
                packet = os.read(src, MAX_PACKET)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # the device is going away
            deliver_at = queue.admit(self._loop.time(), len(packet))
            if deliver_at is not None:
                self._loop.call_at(deliver_at, self._deliver, dst, packet)

    @staticmethod
    def _deliver(dst: int, packet: bytes) -> None:
        try:
            os.write(dst, packet)
        except OSError:
            pass  # the namespace is going away
