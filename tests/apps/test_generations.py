"""generations (seeds 000, 001): pending → complete, refinement links, and reads limited to the caller's own.

One app serves the whole module (a fresh database and server per test would cost most of the run); tests keep
apart by signing in as their own users (`alice`, `bob` are unique per test). The internal functions are called as
generateAnimation's actions call them: by the admin, with the owner's tokenIdentifier as `userId`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from functions.generations import MAX_CHAIN_LENGTH
from server.errors import AuthRequired, ConvexError, FunctionNotFound, IdError, RippleError
from server.testing import RippleApp


@pytest.fixture(scope="module")
def ripple_app(ripple_postgres: str, pytestconfig: pytest.Config) -> Iterator[RippleApp]:
    """The plugin's app, once for the whole module (its own fixture is per test)."""
    with RippleApp.start(ripple_postgres, modules=pytestconfig.getini("ripple_modules")) as app:
        yield app


async def store(ripple_app: RippleApp, user: str, **fields: Any) -> str:
    """A finished generation of `user`; `fields` override the defaults (wire names)."""
    doc = {"userId": ripple_app.token_identifier(user), "prompt": "a bouncing ball", "code": "c", "rawCode": "r"}
    return await ripple_app.as_admin().mutation("generations:store", {**doc, **fields})


async def pending(ripple_app: RippleApp, user: str, **fields: Any) -> str:
    doc = {"userId": ripple_app.token_identifier(user), "prompt": "a bouncing ball", "createdAt": 1000.0}
    return await ripple_app.as_admin().mutation("generations:createPending", {**doc, **fields})


async def chain_of(ripple_app: RippleApp, user: str, n: int) -> list[str]:
    """n generations, each refining the one before; root first."""
    ids = [await store(ripple_app, user, prompt="v0")]
    for i in range(1, n):
        ids.append(await store(ripple_app, user, prompt="v0", parentGenerationId=ids[-1], refinementPrompt=f"r{i}"))
    return ids


async def sql(ripple_app: RippleApp, statement: str, *params: Any) -> Any:
    conn = await asyncpg.connect(ripple_app.database_url)
    try:
        return await conn.fetchval(statement, *params)
    finally:
        await conn.close()


async def json_query(ripple_app: RippleApp, user: str, path: str, args: dict[str, Any]) -> httpx.Response:
    """POST /api/query as `user` in plain JSON (`"format": "json"`), as an HTTP client that is not Convex's sends."""
    headers = {"Authorization": f"Bearer {ripple_app.token(user)}"}
    async with httpx.AsyncClient(base_url=ripple_app.url, timeout=30) as http:
        return await http.post("/api/query", json={"path": path, "args": args, "format": "json"}, headers=headers)


def not_found_code(error: BaseException) -> str | None:
    assert isinstance(error, ConvexError), repr(error)
    return error.data["code"] if isinstance(error.data, dict) else None


# Internal functions.


async def test_create_pending_stores_refinement_fields(ripple_app: RippleApp, alice: str) -> None:
    parent = await store(ripple_app, alice)
    history = [{"role": "user", "content": "make it red"}, {"role": "assistant", "content": "done"}]
    child = await pending(
        ripple_app,
        alice,
        parentGenerationId=parent,
        refinementPrompt="bluer",
        aspectRatio="9:16",
        fps=24,
        durationInSeconds=3,
        conversationHistory=history,
    )
    doc = await ripple_app.as_admin().query("generations:getInternal", {"id": child})
    assert doc["status"] == "pending" and doc["prompt"] == "a bouncing ball" and doc["createdAt"] == 1000.0
    assert doc["parentGenerationId"] == parent and doc["refinementPrompt"] == "bluer"
    assert (doc["aspectRatio"], doc["fps"], doc["durationInSeconds"]) == ("9:16", 24, 3)
    assert doc["conversationHistory"] == history
    assert "code" not in doc and "rawCode" not in doc  # absent, not null


async def test_create_pending_validates_arguments(ripple_app: RippleApp, alice: str) -> None:
    with pytest.raises(RippleError, match='missing required argument "prompt"'):
        await ripple_app.as_admin().mutation("generations:createPending", {"userId": "u", "createdAt": 1.0})
    with pytest.raises(IdError, match=r'parentGenerationId" must be Id\("generations"\)'):
        await pending(ripple_app, alice, parentGenerationId="not-an-id")
    workflow = await sql(
        ripple_app, "INSERT INTO workflows (task, status, current_step) VALUES ('t', 'pending', 's') RETURNING _id"
    )
    with pytest.raises(IdError, match='got an id of table "workflows"'):
        await pending(ripple_app, alice, parentGenerationId=workflow)
    with pytest.raises(RippleError, match="conversationHistory.0.role"):
        await pending(ripple_app, alice, conversationHistory=[{"role": "system", "content": "x"}])
    with pytest.raises(RippleError, match='unexpected argument "colour"'):
        await pending(ripple_app, alice, colour="red")


async def test_internal_functions_are_not_reachable_by_clients(ripple_app: RippleApp, alice: str) -> None:
    gen = await store(ripple_app, alice)
    client = ripple_app.as_user(alice)
    for call, path, args in [
        (client.query, "generations:getInternal", {"id": gen}),
        (client.mutation, "generations:complete", {"id": gen, "status": "failed"}),
        (client.mutation, "generations:store", {"userId": "u", "prompt": "p", "code": "c", "rawCode": "r"}),
    ]:
        with pytest.raises(FunctionNotFound):
            await call(path, args)
    response = await client.http("query", "generations:getInternal", {"id": gen})
    assert response.json()["status"] == "error" and "Could not find public function" in response.json()["errorMessage"]


async def test_store_inserts_a_finished_generation_with_its_links(ripple_app: RippleApp, alice: str) -> None:
    parent = await store(ripple_app, alice)
    child = await store(
        ripple_app, alice, parentGenerationId=parent, refinementPrompt="faster", durationInFrames=90, fps=30
    )
    doc = await ripple_app.as_user(alice).query("generations:get", {"id": child})
    assert doc["status"] == "success" and doc["code"] == "c" and doc["rawCode"] == "r"
    assert doc["parentGenerationId"] == parent and doc["refinementPrompt"] == "faster"
    assert doc["durationInFrames"] == 90 and doc["createdAt"] > 0


async def test_complete_success_patches_the_result(ripple_app: RippleApp, alice: str) -> None:
    gen = await pending(ripple_app, alice, aspectRatio="1:1")
    result = {"code": "code", "rawCode": "```tsx\ncode\n```", "durationInFrames": 150, "fps": 30}
    await ripple_app.as_admin().mutation("generations:complete", {"id": gen, "status": "success", **result})
    doc = await ripple_app.as_user(alice).query("generations:get", {"id": gen})
    assert doc["status"] == "success" and doc["aspectRatio"] == "1:1"
    assert {k: doc[k] for k in result} == result


async def test_complete_failed_removes_the_pending_row(ripple_app: RippleApp, alice: str) -> None:
    gen = await pending(ripple_app, alice)
    args = {"id": gen, "status": "failed", "errorMessage": "Claude is overloaded"}
    await ripple_app.as_admin().mutation("generations:complete", args)
    assert await ripple_app.as_admin().query("generations:getInternal", {"id": gen}) is None
    await ripple_app.as_admin().mutation("generations:complete", args)  # again: nothing left to remove, no error
    finished = await store(ripple_app, alice)
    await ripple_app.as_admin().mutation("generations:complete", {**args, "id": finished})  # never removes a result
    assert (await ripple_app.as_admin().query("generations:getInternal", {"id": finished}))["status"] == "success"
    assert (
        await sql(ripple_app, "SELECT count(*) FROM generations WHERE user_id = $1", ripple_app.token_identifier(alice))
        == 1
    )


async def test_complete_refuses_a_missing_row_or_missing_code(ripple_app: RippleApp, alice: str) -> None:
    gen = await pending(ripple_app, alice)
    with pytest.raises(ConvexError, match='needs "code" and "rawCode"'):
        await ripple_app.as_admin().mutation("generations:complete", {"id": gen, "status": "success", "code": "c"})
    await ripple_app.as_admin().mutation("generations:complete", {"id": gen, "status": "failed"})
    with pytest.raises(ConvexError, match="not found") as info:
        await ripple_app.as_admin().mutation(
            "generations:complete", {"id": gen, "status": "success", "code": "c", "rawCode": "r"}
        )
    assert not_found_code(info.value) == "NOT_FOUND"
    with pytest.raises(RippleError, match='"status"'):
        await ripple_app.as_admin().mutation("generations:complete", {"id": gen, "status": "done"})


async def test_update_partial_writes_only_while_pending(ripple_app: RippleApp, alice: str) -> None:
    gen = await pending(ripple_app, alice)
    assert await ripple_app.as_admin().mutation("generations:updatePartial", {"id": gen, "rawCode": "```tsx\nexp"})
    doc = await ripple_app.as_user(alice).query("generations:get", {"id": gen})
    assert doc["rawCode"] == "```tsx\nexp" and doc["status"] == "pending"
    final = {"id": gen, "status": "success", "code": "final", "rawCode": "final"}
    await ripple_app.as_admin().mutation("generations:complete", final)
    assert not await ripple_app.as_admin().mutation("generations:updatePartial", {"id": gen, "rawCode": "late"})
    assert (await ripple_app.as_user(alice).query("generations:get", {"id": gen}))["rawCode"] == "final"


# Public reads: signed in, own generations only.


async def test_get_requires_sign_in_and_ownership(ripple_app: RippleApp, alice: str, bob: str) -> None:
    gen = await store(ripple_app, alice)
    assert (await ripple_app.as_user(alice).query("generations:get", {"id": gen}))["_id"] == gen
    with pytest.raises(AuthRequired, match="signed in"):
        await ripple_app.anonymous().query("generations:get", {"id": gen})
    with pytest.raises(ConvexError, match=f'generation "{gen}" not found') as foreign:
        await ripple_app.as_user(bob).query("generations:get", {"id": gen})
    missing = await pending(ripple_app, alice)
    await ripple_app.as_admin().mutation("generations:complete", {"id": missing, "status": "failed"})
    with pytest.raises(ConvexError, match=f'generation "{missing}" not found') as gone:
        await ripple_app.as_user(alice).query("generations:get", {"id": missing})
    # Another user's id and a nonexistent id are refused alike: ids do not leak.
    assert not_found_code(foreign.value) == not_found_code(gone.value) == "NOT_FOUND"


async def test_get_over_http_reports_not_found_as_error_data(ripple_app: RippleApp, alice: str, bob: str) -> None:
    gen = await store(ripple_app, alice)
    response = await json_query(ripple_app, bob, "generations:get", {"id": gen})
    body = response.json()
    assert body["status"] == "error" and "not found" in body["errorMessage"]
    assert body["errorData"]["code"] == "NOT_FOUND"
    ok = await json_query(ripple_app, alice, "generations:get", {"id": gen})
    assert ok.json()["value"]["_id"] == gen


async def test_get_validates_the_id(ripple_app: RippleApp, alice: str) -> None:
    with pytest.raises(IdError, match=r'"id" must be Id\("generations"\)'):
        await ripple_app.as_user(alice).query("generations:get", {"id": "nope"})
    with pytest.raises(RippleError, match='missing required argument "id"'):
        await ripple_app.as_user(alice).query("generations:get", {})


async def test_list_pages_own_generations_newest_first(ripple_app: RippleApp, alice: str, bob: str) -> None:
    mine = [await store(ripple_app, alice, prompt=f"p{i}") for i in range(5)]
    await store(ripple_app, bob)
    first = await ripple_app.as_user(alice).query(
        "generations:list", {"paginationOpts": {"numItems": 2, "cursor": None}}
    )
    assert [d["_id"] for d in first["page"]] == mine[::-1][:2] and not first["isDone"]
    rest = await ripple_app.as_user(alice).query(
        "generations:list", {"paginationOpts": {"numItems": 10, "cursor": first["continueCursor"]}}
    )
    assert [d["_id"] for d in rest["page"]] == mine[::-1][2:] and rest["isDone"]
    bobs = await ripple_app.as_user(bob).query("generations:list", {"paginationOpts": {"numItems": 10, "cursor": None}})
    assert len(bobs["page"]) == 1 and bobs["page"][0]["_id"] not in mine
    with pytest.raises(AuthRequired):
        await ripple_app.anonymous().query("generations:list", {"paginationOpts": {"numItems": 2, "cursor": None}})
    with pytest.raises(RippleError, match='missing required argument "paginationOpts"'):
        await ripple_app.as_user(alice).query("generations:list", {})


async def test_list_by_parent_returns_children_oldest_first(ripple_app: RippleApp, alice: str) -> None:
    parent = await store(ripple_app, alice)
    children = [await store(ripple_app, alice, parentGenerationId=parent, refinementPrompt=f"r{i}") for i in range(3)]
    await store(ripple_app, alice)  # unrelated
    await store(ripple_app, alice, parentGenerationId=children[0])  # a grandchild is not a child
    got = await ripple_app.as_user(alice).query("generations:listByParent", {"parentId": parent})
    assert [d["_id"] for d in got] == children
    assert [d["refinementPrompt"] for d in got] == ["r0", "r1", "r2"]
    assert await ripple_app.as_user(alice).query("generations:listByParent", {"parentId": children[2]}) == []


async def test_list_by_parent_refuses_other_users_and_bad_ids(ripple_app: RippleApp, alice: str, bob: str) -> None:
    parent = await store(ripple_app, alice)
    await store(ripple_app, alice, parentGenerationId=parent)
    with pytest.raises(ConvexError, match="not found"):
        await ripple_app.as_user(bob).query("generations:listByParent", {"parentId": parent})
    with pytest.raises(AuthRequired):
        await ripple_app.anonymous().query("generations:listByParent", {"parentId": parent})
    with pytest.raises(IdError, match=r'"parentId" must be Id\("generations"\)'):
        await ripple_app.as_user(alice).query("generations:listByParent", {"parentId": "x"})
    with pytest.raises(RippleError, match='unexpected argument "parent_id"'):
        await ripple_app.as_user(alice).query("generations:listByParent", {"parent_id": parent})


async def test_list_by_parent_leaves_out_children_of_other_users(ripple_app: RippleApp, alice: str, bob: str) -> None:
    parent = await store(ripple_app, alice)
    own = await store(ripple_app, alice, parentGenerationId=parent)
    await store(ripple_app, bob, parentGenerationId=parent)  # only possible by writing directly
    got = await ripple_app.as_user(alice).query("generations:listByParent", {"parentId": parent})
    assert [d["_id"] for d in got] == [own]


async def test_refinement_chain_is_root_first(ripple_app: RippleApp, alice: str) -> None:
    ids = await chain_of(ripple_app, alice, 4)
    got = await ripple_app.as_user(alice).query("generations:getRefinementChain", {"generationId": ids[-1]})
    assert [d["_id"] for d in got] == ids
    assert [d.get("refinementPrompt") for d in got] == [None, "r1", "r2", "r3"]
    middle = await ripple_app.as_user(alice).query("generations:getRefinementChain", {"generationId": ids[1]})
    assert [d["_id"] for d in middle] == ids[:2]
    root = await ripple_app.as_user(alice).query("generations:getRefinementChain", {"generationId": ids[0]})
    assert [d["_id"] for d in root] == ids[:1]


async def test_refinement_chain_survives_a_cycle_written_in_sql(ripple_app: RippleApp, alice: str) -> None:
    a, b, c = await chain_of(ripple_app, alice, 3)
    await sql(ripple_app, "UPDATE generations SET parent_generation_id = $1 WHERE _id = $2", c, a)  # a → c → b → a
    got = await ripple_app.as_user(alice).query("generations:getRefinementChain", {"generationId": c})
    assert [d["_id"] for d in got] == [a, b, c]  # each once, ending at the one asked for
    await sql(ripple_app, "UPDATE generations SET parent_generation_id = _id WHERE _id = $1", b)  # b → b
    got = await ripple_app.as_user(alice).query("generations:getRefinementChain", {"generationId": b})
    assert [d["_id"] for d in got] == [b]


async def test_refinement_chain_is_capped(ripple_app: RippleApp, alice: str) -> None:
    ids = await chain_of(ripple_app, alice, MAX_CHAIN_LENGTH + 5)
    got = await ripple_app.as_user(alice).query("generations:getRefinementChain", {"generationId": ids[-1]})
    assert MAX_CHAIN_LENGTH == 50 and len(got) == 50
    assert [d["_id"] for d in got] == ids[-50:]  # the newest 50, still root-most first


async def test_refinement_chain_refuses_others_and_stops_at_foreign_ancestors(
    ripple_app: RippleApp, alice: str, bob: str
) -> None:
    ids = await chain_of(ripple_app, alice, 3)
    with pytest.raises(ConvexError, match="not found"):
        await ripple_app.as_user(bob).query("generations:getRefinementChain", {"generationId": ids[-1]})
    with pytest.raises(AuthRequired):
        await ripple_app.anonymous().query("generations:getRefinementChain", {"generationId": ids[-1]})
    bob = ripple_app.token_identifier(bob)
    await sql(ripple_app, "UPDATE generations SET user_id = $1 WHERE _id = $2", bob, ids[0])
    got = await ripple_app.as_user(alice).query("generations:getRefinementChain", {"generationId": ids[-1]})
    assert [d["_id"] for d in got] == ids[1:]
    await sql(ripple_app, "DELETE FROM generations WHERE _id = $1", ids[1])  # a gap in the chain
    got = await ripple_app.as_user(alice).query("generations:getRefinementChain", {"generationId": ids[-1]})
    assert [d["_id"] for d in got] == ids[2:]
    with pytest.raises(IdError):
        await ripple_app.as_user(alice).query("generations:getRefinementChain", {"generationId": "zzz"})


async def test_create_pending_takes_only_storage_ids_as_reference_images(ripple_app: RippleApp, alice: str) -> None:
    generation = await store(ripple_app, alice)
    with pytest.raises(IdError, match=r'referenceImageIds.*got an id of table "generations"') as wrong_table:
        await pending(ripple_app, alice, referenceImageIds=[generation])
    assert 'Id("_storage")' in str(wrong_table.value), str(wrong_table.value)
    with pytest.raises(IdError, match=r'referenceImageIds.*Id\("_storage"\)'):
        await pending(ripple_app, alice, referenceImageIds=["not-an-id"])
    assert (
        await sql(ripple_app, "SELECT count(*) FROM generations WHERE user_id = $1", ripple_app.token_identifier(alice))
        == 1
    )
