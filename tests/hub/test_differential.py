"""The differential test: several clients of two Ripple processes write at random while others watch; once writes
stop, every subscription's last value equals a fresh run of its query (as its client's identity).

In the same seeded run, the moves that broke sessions and hubs before: clients re-authenticate (a refreshed token,
another user, none) at random moments, also while their mutations are in flight, and watch queries that read the
identity; writers lose their socket right after sending a mutation and resend it on a new connection of the same
session, as the official clients do (it must apply exactly once); plain-SQL writers draw their commit ts before
their last write; and every mutation's covering Transition shows its write (each writer owns some rows). Set
RIPPLE_DIFF_SEEDS (e.g. "1,2,3") to run other seeds.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import jwt
import pytest

from tests.support import testing_app  # noqa: F401 (registers the testing: functions)
from tests.support.server import ISSUER, JWT_SECRET, RippleServer, second_process
from tests.support.ws import ResumableClient, ts_of

SEEDS = [int(seed) for seed in os.environ.get("RIPPLE_DIFF_SEEDS", "11").split(",")]
SHARED = [f"d{i}" for i in range(6)]
STATUSES = ["Queued", "Failed", "Completed"]
# Users are named after statuses: testing:myVideos lists the videos whose status is the caller's subject, so
# an auth-reading query is also invalidated by the plain-SQL writers' status changes.
USERS = STATUSES
RIPPLE_WRITERS, SQL_WRITERS, WATCHERS, STEPS = 4, 2, 4, 25
ISSUED_AT = int(time.time())


def refreshed_token(user: str, n: int) -> str:
    """The `n`th token of `user`, as a refresh makes it: a later `iat` (a claim queries can see) and expiry."""
    claims = {"sub": user, "iss": ISSUER, "name": f"user {user}", "iat": ISSUED_AT - 100_000 + n}
    claims["exp"] = ISSUED_AT + 3600 + n
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


@pytest.mark.parametrize("seed", SEEDS)
async def test_differential_random_mutations_settle_on_fresh_results(ripple: RippleServer, seed: int) -> None:
    """Several clients of two processes mutate at random (rows some queries read and rows none does, through
    either process or plain SQL) while others watch; once writes stop, every subscription's last value equals a
    fresh run of its query."""
    async with second_process(ripple) as other:
        await Run(ripple, [ripple.ws_url, other.replace("http", "ws") + "/api/sync"], seed).run()


@dataclass(eq=False)
class Run:
    ripple: RippleServer
    urls: list[str]
    seed: int
    clients: list[ResumableClient] = field(default_factory=list)
    users: dict[int, str | None] = field(default_factory=dict)  # id(client) -> the subject it is signed in as
    subscriptions: list[tuple[ResumableClient, int, str, dict[str, Any]]] = field(default_factory=list)
    increments: dict[str, int] = field(default_factory=dict)  # counter row -> requests that incremented it
    tokens: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    def note(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    async def run(self) -> None:
        rng = random.Random(self.seed)
        setup = await self.client(self.urls[0])
        for w in range(RIPPLE_WRITERS):
            for row in (f"own{w}", f"ctr{w}"):
                await setup.mutation("testing:setProgress", {"twitchId": row, "progress": 0})
            self.increments[f"ctr{w}"] = 0
        watchers = [await self.client(self.urls[n % len(self.urls)]) for n in range(WATCHERS)]
        for watcher in watchers:
            if rng.random() < 0.6:
                await self.reauthenticate(watcher, rng)
            for _ in range(4):
                await self.subscribe(watcher, *self.random_query(rng))
        stop = asyncio.Event()
        watching = [asyncio.create_task(self.watch(watcher, random.Random(rng.random()), stop)) for watcher in watchers]
        try:
            await asyncio.gather(
                *(self.ripple_writer(w, random.Random(rng.random())) for w in range(RIPPLE_WRITERS)),
                *(self.sql_writer(random.Random(rng.random())) for _ in range(SQL_WRITERS)),
            )
        finally:
            stop.set()
            await asyncio.gather(*watching)
        await asyncio.gather(*(client.settle(0.5) for client in self.clients))
        await self.check()
        for client in self.clients:
            await client.close()

    async def check(self) -> None:
        for client, qid, path, args in self.subscriptions:
            response = await self.ripple.http("query", path, args, token=client.token)
            fresh = response.json()["value"]
            assert qid not in client.errors, (self.seed, path, args, client.errors[qid])
            assert client.results[qid] == fresh, (self.seed, path, args, self.users[id(client)])
        for row, count in self.increments.items():
            value = (await self.ripple.http("query", "testing:count", {"twitchId": row})).json()["value"]
            assert value == count, f"seed {self.seed}: {row} was incremented {value} times by {count} requests"
        print(f"seed {self.seed}: {sorted(self.stats.items())}")
        for move in ("drops and resends", "re-authentications with a mutation in flight", "plain SQL writes after SET"):
            assert self.stats.get(move), f"seed {self.seed} made no {move}: pick another seed"

    # Clients.

    async def client(self, url: str) -> ResumableClient:
        client = await ResumableClient.open(url)
        self.clients.append(client)
        self.users[id(client)] = None
        return client

    async def subscribe(self, client: ResumableClient, path: str, args: dict[str, Any]) -> int:
        qid = await client.subscribe(path, args)
        self.subscriptions.append((client, qid, path, args))
        return qid

    def random_query(self, r: random.Random) -> tuple[str, dict[str, Any]]:
        x = r.random()
        if x < 0.35:
            return "testing:count", {"twitchId": r.choice(SHARED)}
        if x < 0.5:
            return "testing:count", {"twitchId": f"{r.choice(['own', 'ctr'])}{r.randrange(RIPPLE_WRITERS)}"}
        if x < 0.7:
            return "testing:videosByStatus", {"status": r.choice(STATUSES)}
        if x < 0.85:
            return "testing:myVideos", {}
        return "testing:whoami", {}

    async def reauthenticate(self, client: ResumableClient, r: random.Random) -> None:
        """A refreshed token of the same user, another user, or none."""
        user = self.users[id(client)]
        x = r.random()
        if user is not None and x < 0.4:
            self.note("token refreshes")
        elif x < 0.85:
            user = r.choice(USERS)
            self.note("user switches")
        else:
            user = None
            self.note("sign-outs")
        self.users[id(client)] = user
        self.tokens += 1
        token = refreshed_token(user, self.tokens) if user else None
        confirmed = await client.authenticate(token)
        assert confirmed["type"] == "Transition", confirmed

    async def watch(self, client: ResumableClient, r: random.Random, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await client.read_for(r.uniform(0.05, 0.3))
            if r.random() < 0.5:
                await self.reauthenticate(client, r)

    # Writers.

    async def ripple_writer(self, w: int, r: random.Random) -> None:
        client = await self.client(self.urls[w % len(self.urls)])
        if r.random() < 0.5:
            await self.reauthenticate(client, r)
        own = await self.subscribe(client, "testing:count", {"twitchId": f"own{w}"})
        counter = await self.subscribe(client, "testing:count", {"twitchId": f"ctr{w}"})
        await self.subscribe(client, *self.random_query(r))
        for step in range(STEPS):
            x = r.random()
            if x < 0.3:
                args = {"twitchId": r.choice([*SHARED, "unwatched"]), "progress": r.randrange(100)}
                await self.mutate(client, "testing:setProgress", args, r)
            elif x < 0.5:
                # Read-your-writes: nobody else writes this row, so the covering Transition shows this value.
                await self.mutate(client, "testing:setProgress", {"twitchId": f"own{w}", "progress": step + 1}, r)
                assert client.results[own] == step + 1, (self.seed, w, step, client.results[own])
            elif x < 0.8:
                response = await self.increment(client, f"ctr{w}", r)
                count = self.increments[f"ctr{w}"]
                assert response["result"] == count, (self.seed, w, step, response)
                assert client.results[counter] == count, (self.seed, w, step, client.results[counter])
            elif x < 0.9:
                # A mutation runs as the identity of its arrival, whatever Authenticate follows it.
                before = self.users[id(client)]
                response = await self.mutate(client, "testing:whoamiMutation", {}, r, reauthenticate=True)
                assert response["result"] == before, (self.seed, w, step, response, before)
            else:
                await self.reauthenticate(client, r)

    async def mutate(
        self,
        client: ResumableClient,
        path: str,
        args: dict[str, Any],
        r: random.Random,
        *,
        reauthenticate: bool | None = None,
    ) -> dict[str, Any]:
        """Send a mutation, maybe re-authenticate while it is in flight, and return its response once its covering
        Transition has arrived."""
        request_id = client.next_request_id
        client.next_request_id += 1
        await client.send({"type": "Mutation", "requestId": request_id, "udfPath": path, "args": [args]})
        if reauthenticate or (reauthenticate is None and r.random() < 0.25):
            self.note("re-authentications with a mutation in flight")
            await self.reauthenticate(client, r)
        return await self.covered(client, request_id)

    async def increment(self, client: ResumableClient, row: str, r: random.Random) -> dict[str, Any]:
        """testing:increment of `row`; half the time the socket is lost right after sending it (sometimes before
        the server read it, sometimes after), and it is sent again on a new connection of the same session (to
        either process)."""
        request_id = client.next_request_id
        client.next_request_id += 1
        args = [{"twitchId": row}]
        message = {"type": "Mutation", "requestId": request_id, "udfPath": "testing:increment", "args": args}
        self.increments[row] += 1
        await client.send(message)
        if r.random() >= 0.5:
            return await self.covered(client, request_id)
        await asyncio.sleep(r.choice([0.0, 0.002, 0.02]))
        client.drop()
        self.note("drops and resends")
        applied = (await self.ripple.http("query", "testing:count", {"twitchId": row})).json()["value"]
        if applied == self.increments[row]:
            self.note("resends of a mutation applied before the drop")
        seen, url = ts_of(client.version["ts"]), client.url
        await client.reconnect([message], url=r.choice(self.urls))
        response = await self.covered(client, request_id)
        if client.url == url:  # one hub's processed ts never goes back, across connections too
            assert ts_of(client.version["ts"]) >= seen, (self.seed, seen, client.version)
        return response

    async def covered(self, client: ResumableClient, request_id: int) -> dict[str, Any]:
        """The response to `request_id`, after a Transition at or past its ts (and past the current query set)."""
        response = await client.expect(
            lambda m: m["type"] == "MutationResponse" and m["requestId"] == request_id, timeout_s=20
        )
        assert response["success"], (self.seed, response)
        ts, query_set = ts_of(response["ts"]), client.query_set

        def covering(m: dict[str, Any]) -> bool:
            return m["type"] == "Transition" and ts_of(m["endVersion"]["ts"]) >= ts

        if ts_of(client.version["ts"]) < ts or client.version["querySet"] < query_set:
            await client.expect(lambda m: covering(m) and m["endVersion"]["querySet"] >= query_set, timeout_s=20)
        return response

    async def sql_writer(self, r: random.Random) -> None:
        """Plain SQL: single statements, and transactions that draw their commit ts before their last write (an
        explicit `SELECT _ripple_commit_ts()`, or `SET CONSTRAINTS ALL IMMEDIATE`, which runs the deferred
        trigger that draws it)."""
        conn = await asyncpg.connect(self.ripple.settings.database_url)
        try:
            for _ in range(STEPS):
                first, second = sorted(r.sample([*SHARED, "unwatched"], 2))  # one lock order: no deadlocks
                x = r.random()
                if x < 0.4:
                    await self.sql_write(conn, first, r)
                    self.note("plain SQL writes")
                else:
                    draw = "SELECT _ripple_commit_ts()" if x < 0.7 else "SET CONSTRAINTS ALL IMMEDIATE"
                    async with conn.transaction():
                        await self.sql_write(conn, first, r)
                        await conn.execute(draw)
                        await asyncio.sleep(r.choice([0.0, 0.002]))
                        await self.sql_write(conn, second, r)
                    self.note(f"plain SQL writes after {draw.split()[0]}")
                await asyncio.sleep(r.uniform(0.0, 0.02))
        finally:
            await conn.close()

    async def sql_write(self, conn: asyncpg.Connection, twitch_id: str, r: random.Random) -> None:
        if r.random() < 0.5:
            await conn.execute("UPDATE videos SET status = $1 WHERE twitch_id = $2", r.choice(STATUSES), twitch_id)
        else:
            await conn.execute(
                "UPDATE videos SET progress_percentage = $1 WHERE twitch_id = $2", float(r.randrange(100)), twitch_id
            )


async def test_a_refreshed_token_with_other_claims_reruns_queries_that_read_them(ripple: RippleServer) -> None:
    """Found by the differential run: testing:whoami kept showing the first token's claims after a refresh (an
    instance that read auth was keyed by issuer|subject alone), and two sockets of one user with other claims
    shared one result."""
    client = await ResumableClient.open(ripple.ws_url)
    await client.authenticate(ripple.token("alice", name="first"))
    qid = await client.subscribe("testing:whoami")
    assert client.results[qid]["name"] == "first"
    await client.authenticate(ripple.token("alice", name="second"))
    await client.settle(0.5)
    assert client.results[qid]["name"] == "second"
    other = await ResumableClient.open(ripple.ws_url)
    await other.authenticate(ripple.token("alice", name="third"))
    other_qid = await other.subscribe("testing:whoami")
    await other.settle(0.3)
    await client.settle(0.3)
    assert (client.results[qid]["name"], other.results[other_qid]["name"]) == ("second", "third")
    await client.close()
    await other.close()
