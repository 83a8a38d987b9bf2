"""Subscribe to a query by speaking Convex's sync protocol directly, with nothing but the `websockets` library.

This is what the official clients do under the hood (see the protocol notes in the repository's docs):

    client → Connect                      {sessionId, connectionCount, lastCloseReason, clientTs}
    client → Authenticate (optional)      {tokenType: "User", value: <JWT>, baseVersion: 0}
    client → ModifyQuerySet               {baseVersion: 0, newVersion: 1, modifications: [Add {queryId, udfPath, args}]}
    server → Transition                   {startVersion, endVersion, modifications: [QueryUpdated {queryId, value}]}
    ... one Transition each time a commit changes the result; a Ping after 15 s of silence.

Each Transition must start where the previous one ended; values use Convex's JSON encoding (plain JSON here).
Prints every result, and exits after --updates results (0 on success) or --timeout seconds (exit 2).

    python client_examples/python/raw_websocket.py videos:listByStatus '{"status": "Queued"}' --updates 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from typing import Any

from websockets.asyncio.client import connect


async def follow(ws_url: str, function: str, args: dict[str, Any], token: str | None, updates: int) -> int:
    async with connect(ws_url) as ws:
        hello: list[dict[str, Any]] = [
            {
                "type": "Connect",
                "sessionId": str(uuid.uuid4()),
                "connectionCount": 0,
                "lastCloseReason": "InitialConnect",
                "clientTs": int(time.time() * 1000),
            }
        ]
        if token:
            hello.append({"type": "Authenticate", "tokenType": "User", "value": token, "baseVersion": 0})
        hello.append(
            {
                "type": "ModifyQuerySet",
                "baseVersion": 0,
                "newVersion": 1,
                "modifications": [{"type": "Add", "queryId": 0, "udfPath": function, "args": [args]}],
            }
        )
        for message in hello:
            print(">>", json.dumps(message), flush=True)
            await ws.send(json.dumps(message))
        version = {"querySet": 0, "identity": 0, "ts": "AAAAAAAAAAA="}
        seen = 0
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] in ("AuthError", "FatalError"):
                print("<<", message["type"], message.get("error"), flush=True)
                return 1
            if message["type"] != "Transition":
                continue  # Ping: nothing to answer
            assert message["startVersion"] == version, "a Transition must start where the last one ended"
            version = message["endVersion"]
            for mod in message["modifications"]:
                if mod["type"] == "QueryUpdated":
                    print(f"<< update at ts {version['ts']}:", json.dumps(mod["value"]), flush=True)
                elif mod["type"] == "QueryFailed":
                    print(f"<< query failed: {mod['errorMessage']}", flush=True)
                else:
                    continue
                seen += 1
                if seen >= updates:
                    return 0
    return 1  # the server closed the socket


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("function", nargs="?", default="videos:listByStatus", help='e.g. "videos:getJobById"')
    parser.add_argument("args", nargs="?", default="{}", help="the query's arguments, a JSON object")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the deployment URL")
    parser.add_argument("--token", help="a JWT (e.g. from `ripple token --sub me`) for queries that need sign-in")
    parser.add_argument("--updates", type=int, default=3, help="exit after this many results")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    # Convex clients map the deployment URL to ws(s)://<host>/api/sync.
    ws_url = args.url.replace("https://", "wss://").replace("http://", "ws://").rstrip("/") + "/api/sync"
    try:
        return asyncio.run(
            asyncio.wait_for(
                follow(ws_url, args.function, json.loads(args.args), args.token, args.updates), args.timeout
            )
        )
    except TimeoutError:
        print(f"raw_websocket: fewer than {args.updates} results after {args.timeout:g}s", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
