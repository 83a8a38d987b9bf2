"""The sync WebSocket endpoint: a receive loop feeding the session, a send loop draining its outbox, a heartbeat.

The two loops never wait on each other, so a slow client delays only its own outbox, never the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketDisconnect

from server.sync import protocol
from server.sync.session import Session, SessionClosed

if TYPE_CHECKING:
    from server.app import Services

__all__ = ["sync_endpoint"]

log = logging.getLogger("ripple.sync")


async def sync_endpoint(websocket: WebSocket) -> None:
    services: Services = websocket.app.state.services
    await websocket.accept()
    client = f"{websocket.client.host}:{websocket.client.port}" if websocket.client else "?"
    log.info("sync socket opened", extra={"client": client, "path": websocket.url.path})
    session = Session(services)
    services.sessions.add(session)
    services.metrics.connections.inc()
    sender = asyncio.create_task(_send_loop(websocket, session, services.settings.ping_interval_s))
    try:
        while not sender.done():
            receive = asyncio.create_task(websocket.receive())
            done, _ = await asyncio.wait({receive, sender}, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
                break
            message = receive.result()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is None:
                session.handle_binary()
                continue
            await session.handle(text)
    except WebSocketDisconnect:
        pass
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        await session.close()
        services.sessions.discard(session)
        services.metrics.connections.dec()
        closed = session.closed
        if closed is None and sender.done() and not sender.cancelled():
            error = sender.exception()
            closed = error if isinstance(error, SessionClosed) else None
        log.info(
            "sync socket closed",
            extra={"client": client, "session_id": session.session_id, "reason": closed.reason if closed else "peer"},
        )
        if closed is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(websocket.close(closed.code, closed.reason), 5)


async def _send_loop(websocket: WebSocket, session: Session, ping_interval_s: float) -> None:
    """Send queued messages in order; a Ping after `ping_interval_s` of silence; stop when the session closes."""
    while True:
        try:
            await asyncio.wait_for(session.outbox_ready.wait(), ping_interval_s)
        except TimeoutError:
            await websocket.send_text(protocol.PING)
            continue
        session.outbox_ready.clear()
        while (text := session.next_message()) is not None:
            try:
                await asyncio.wait_for(websocket.send_text(text), session.services.settings.slow_client_timeout_s)
            except TimeoutError:
                raise SessionClosed(1013, "client too slow: a message waited too long to be sent; reconnect") from None
        if session.closed is not None:
            raise SessionClosed(session.closed.code, session.closed.reason)
