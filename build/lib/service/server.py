"""uvicorn with a graceful drain: what SIGTERM (or Ctrl-C) does.

1. At once: /readyz answers 503, so a load balancer stops sending new work.
2. After RANKER_SHUTDOWN_DELAY_S (time for the balancer to notice): admission stops (new /rank
   requests get 503 with Retry-After) and uvicorn closes its listening socket.
3. Requests in flight finish, for at most RANKER_SHUTDOWN_GRACE_S; then the app's lifespan ends
   (queued runs finish, Redis writes flush) and the process exits 0.

A second signal skips the wait. uvicorn's own handler re-raises the signal once it is done, which
turns a clean drain into exit status 143; this one does not.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import uvicorn
from fastapi import FastAPI

from service.config import Settings
from service.protocol import guarded

log = logging.getLogger("service")


def server_config(app: FastAPI, settings: Settings, **config) -> uvicorn.Config:
    """uvicorn's configuration of the service: its connection limits (service/protocol.py) and
    graceful shutdown, from the settings."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded(settings.header_timeout_s, settings.max_header_bytes),
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        **config,
    )


class DrainingServer(uvicorn.Server):
    def __init__(self, app: FastAPI, settings: Settings, **config):
        super().__init__(server_config(app, settings, **config))
        self.app, self.settings = app, settings
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if self._draining:  # a second signal: stop now
            self.should_exit = self.force_exit = True
            return
        self._draining = True
        state = self.app.state
        state.ready = False  # /readyz turns false first
        log.info(
            "%s: draining (admission stops in %.1f s, in-flight requests get %.1f s)",
            signal.Signals(sig).name,
            self.settings.shutdown_delay_s,
            self.settings.shutdown_grace_s,
        )
        if self._loop is None:  # not serving yet
            self._stop()
        else:  # signal handlers may run outside the loop: hand the timer to it
            self._loop.call_soon_threadsafe(
                self._loop.call_later, self.settings.shutdown_delay_s, self._stop
            )

    def _stop(self) -> None:
        admission = getattr(self.app.state, "admission", None)
        if admission is not None:
            admission.draining = True
        self.should_exit = True
