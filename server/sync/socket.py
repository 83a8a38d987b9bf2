"""The sync WebSocket endpoint: a receive loop feeding the session, a send loop draining its outbox, and one
watcher for all sockets (heartbeat, stuck clients).

The two loops never wait on each other, so a slow client delays only its own outbox, never the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketDisconnect

from server.sync.session import Session

if TYPE_CHECKING:
    from server.app import Services

__all__ = ["sync_endpoint", "watch_sessions"]

log = logging.getLogger("ripple.sync")


async def sync_endpoint(websocket: WebSocket) -> None:
    services: Services = websocket.app.state.services
    await websocket.accept()
    client = f"{websocket.client.host}:{websocket.client.port}" if websocket.client else "?"
    log.info("sync socket opened", extra={"client": client, "path": websocket.url.path})
    session = Session(services)
    services.sessions.add(session)
    services.metrics.connections.inc()
    receiver = asyncio.current_task()
    assert receiver is not None
    sender = asyncio.create_task(_send_loop(websocket, session, receiver))
    session.sender = sender
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is None:
                session.handle_binary()
                continue
            await session.handle(text)
    except WebSocketDisconnect:
        pass
    except asyncio.CancelledError:
        if not session.aborted:
            raise
        receiver.uncancel()  # the send loop gave up on a client that took not even a close frame
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        await session.close()
        services.sessions.discard(session)
        services.metrics.connections.dec()
        reason = session.closed.reason if session.closed else "peer"
        log.info("sync socket closed", extra={"client": client, "session_id": session.session_id, "reason": reason})


async def _send_loop(websocket: WebSocket, session: Session, receiver: asyncio.Task[None]) -> None:
    """Send queued messages in order; when the session closes, send the close frame.

    No timer per message: `watch_sessions` pings quiet sockets and closes stuck ones for every socket at once.
    """
    loop = asyncio.get_running_loop()
    try:
        while session.closed is None:
            await session.outbox_filled()
            while (text := session.next_message()) is not None:
                session.sending_since = loop.time()
                try:
                    await websocket.send_text(text)
                finally:
                    session.sending_since = None
                session.last_send = loop.time()
    except asyncio.CancelledError:
        if session.closed is None or not session.stuck:
            raise
        asyncio.current_task().uncancel()  # type: ignore[union-attr]  # give_up's cancel is handled: close now
    closed = session.closed
    if closed is None:
        return
    try:
        async with asyncio.timeout(5):
            await websocket.close(closed.code, closed.reason)
    except Exception as exc:
        log.info("could not send the close frame (%r); dropping the connection", exc)
        session.aborted = True
        receiver.cancel()


async def watch_sessions(sessions: set[Session], ping_interval_s: float, slow_client_timeout_s: float) -> None:
    """Once a second, for every socket: a Ping after `ping_interval_s` of silence (Convex's heartbeat), and a
    1013 close for a socket that could not take a message for `slow_client_timeout_s` (its client reconnects
    to fresh results instead of keeping an ever-growing backlog)."""
    loop = asyncio.get_running_loop()
    tick = min(1.0, ping_interval_s / 2, slow_client_timeout_s / 2)
    while True:
        await asyncio.sleep(tick)
        now = loop.time()
        for session in list(sessions):
            if session.sending_since is not None and now - session.sending_since > slow_client_timeout_s:
                session.give_up("client too slow: a message waited too long to be sent; reconnect")
            elif now - session.last_send >= ping_interval_s and not session.outbox:
                session.ping()
