"""generations (seeds 000, 001): pending → complete, refinement links, and reads limited to the caller's own.

One server serves the whole module (a fresh database and server per test would cost most of the run); tests keep
apart by signing in as their own users (`alice`, `bob` are unique per test).
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from functions.generations import MAX_CHAIN_LENGTH
from server.errors import AuthRequired, ConvexError, FunctionNotFound, IdError, RippleError
from tests.support.server import RippleServer


@pytest.fixture(scope="module")
def ripple(module_ripple: RippleServer) -> RippleServer:
    """One server for the whole module; each test signs in as its own users (`alice`, `bob`)."""
    return module_ripple


async def token_of(ripple: RippleServer, user: str) -> str:
    caller = await ripple.caller(user)
    assert caller.identity is not None
    return caller.identity.token_identifier


async def store(ripple: RippleServer, user: str, **fields: Any) -> str:
    """A finished generation of `user`; `fields` override the defaults (wire names)."""
    doc = {"userId": await token_of(ripple, user), "prompt": "a bouncing ball", "code": "c", "rawCode": "r"}
    return await ripple.call("generations:store", {**doc, **fields}, internal=True)


async def pending(ripple: RippleServer, user: str, **fields: Any) -> str:
    doc = {"userId": await token_of(ripple, user), "prompt": "a bouncing ball", "createdAt": 1000.0}
    return await ripple.call("generations:createPending", {**doc, **fields}, internal=True)


async def chain_of(ripple: RippleServer, user: str, n: int) -> list[str]:
    """n generations, each refining the one before; root first."""
    ids = [await store(ripple, user, prompt="v0")]
    for i in range(1, n):
        ids.append(await store(ripple, user, prompt="v0", parentGenerationId=ids[-1], refinementPrompt=f"r{i}"))
    return ids


async def sql(ripple: RippleServer, statement: str, *params: Any) -> Any:
    conn = await asyncpg.connect(ripple.settings.database_url)
    try:
        return await conn.fetchval(statement, *params)
    finally:
        await conn.close()


def not_found_code(error: BaseException) -> str | None:
    assert isinstance(error, ConvexError), repr(error)
    return error.data["code"] if isinstance(error.data, dict) else None


# Internal functions.


async def test_create_pending_stores_refinement_fields(ripple: RippleServer, alice: str) -> None:
    parent = await store(ripple, alice)
    history = [{"role": "user", "content": "make it red"}, {"role": "assistant", "content": "done"}]
    child = await pending(
        ripple,
        alice,
        parentGenerationId=parent,
        refinementPrompt="bluer",
        aspectRatio="9:16",
        fps=24,
        durationInSeconds=3,
        conversationHistory=history,
    )
    doc = await ripple.call("generations:getInternal", {"id": child}, internal=True)
    assert doc["status"] == "pending" and doc["prompt"] == "a bouncing ball" and doc["createdAt"] == 1000.0
    assert doc["parentGenerationId"] == parent and doc["refinementPrompt"] == "bluer"
    assert (doc["aspectRatio"], doc["fps"], doc["durationInSeconds"]) == ("9:16", 24, 3)
    assert doc["conversationHistory"] == history
    assert "code" not in doc and "rawCode" not in doc  # absent, not null


async def test_create_pending_validates_arguments(ripple: RippleServer, alice: str) -> None:
    with pytest.raises(RippleError, match='missing required argument "prompt"'):
        await ripple.call("generations:createPending", {"userId": "u", "createdAt": 1.0}, internal=True)
    with pytest.raises(IdError, match=r'parentGenerationId" must be Id\("generations"\)'):
        await pending(ripple, alice, parentGenerationId="not-an-id")
    workflow = await sql(
        ripple, "INSERT INTO workflows (task, status, current_step) VALUES ('t', 'pending', 's') RETURNING _id"
    )
    with pytest.raises(IdError, match='got an id of table "workflows"'):
        await pending(ripple, alice, parentGenerationId=workflow)
    with pytest.raises(RippleError, match="conversationHistory.0.role"):
        await pending(ripple, alice, conversationHistory=[{"role": "system", "content": "x"}])
    with pytest.raises(RippleError, match='unexpected argument "colour"'):
        await pending(ripple, alice, colour="red")


async def test_internal_functions_are_not_reachable_by_clients(ripple: RippleServer, alice: str) -> None:
    gen = await store(ripple, alice)
    for path, args in [
        ("generations:getInternal", {"id": gen}),
        ("generations:complete", {"id": gen, "status": "failed"}),
        ("generations:store", {"userId": "u", "prompt": "p", "code": "c", "rawCode": "r"}),
    ]:
        with pytest.raises(FunctionNotFound):
            await ripple.call(path, args, user=alice)
    response = await ripple.http("query", "generations:getInternal", {"id": gen}, token=ripple.token(alice))
    assert response.json()["status"] == "error" and "Could not find public function" in response.json()["errorMessage"]


async def test_store_inserts_a_finished_generation_with_its_links(ripple: RippleServer, alice: str) -> None:
    parent = await store(ripple, alice)
    child = await store(
        ripple, alice, parentGenerationId=parent, refinementPrompt="faster", durationInFrames=90, fps=30
    )
    doc = await ripple.call("generations:get", {"id": child}, user=alice)
    assert doc["status"] == "success" and doc["code"] == "c" and doc["rawCode"] == "r"
    assert doc["parentGenerationId"] == parent and doc["refinementPrompt"] == "faster"
    assert doc["durationInFrames"] == 90 and doc["createdAt"] > 0


async def test_complete_success_patches_the_result(ripple: RippleServer, alice: str) -> None:
    gen = await pending(ripple, alice, aspectRatio="1:1")
    result = {"code": "code", "rawCode": "```tsx\ncode\n```", "durationInFrames": 150, "fps": 30}
    await ripple.call("generations:complete", {"id": gen, "status": "success", **result}, internal=True)
    doc = await ripple.call("generations:get", {"id": gen}, user=alice)
    assert doc["status"] == "success" and doc["aspectRatio"] == "1:1"
    assert {k: doc[k] for k in result} == result


async def test_complete_failed_removes_the_pending_row(ripple: RippleServer, alice: str) -> None:
    gen = await pending(ripple, alice)
    args = {"id": gen, "status": "failed", "errorMessage": "Claude is overloaded"}
    await ripple.call("generations:complete", args, internal=True)
    assert await ripple.call("generations:getInternal", {"id": gen}, internal=True) is None
    await ripple.call("generations:complete", args, internal=True)  # again: nothing left to remove, no error
    finished = await store(ripple, alice)
    await ripple.call("generations:complete", {**args, "id": finished}, internal=True)  # never removes a result
    assert (await ripple.call("generations:getInternal", {"id": finished}, internal=True))["status"] == "success"
    assert await sql(ripple, "SELECT count(*) FROM generations WHERE user_id = $1", await token_of(ripple, alice)) == 1


async def test_complete_refuses_a_missing_row_or_missing_code(ripple: RippleServer, alice: str) -> None:
    gen = await pending(ripple, alice)
    with pytest.raises(ConvexError, match='needs "code" and "rawCode"'):
        await ripple.call("generations:complete", {"id": gen, "status": "success", "code": "c"}, internal=True)
    await ripple.call("generations:complete", {"id": gen, "status": "failed"}, internal=True)
    with pytest.raises(ConvexError, match="not found") as info:
        await ripple.call(
            "generations:complete", {"id": gen, "status": "success", "code": "c", "rawCode": "r"}, internal=True
        )
    assert not_found_code(info.value) == "NOT_FOUND"
    with pytest.raises(RippleError, match='"status"'):
        await ripple.call("generations:complete", {"id": gen, "status": "done"}, internal=True)


async def test_update_partial_writes_only_while_pending(ripple: RippleServer, alice: str) -> None:
    gen = await pending(ripple, alice)
    assert await ripple.call("generations:updatePartial", {"id": gen, "rawCode": "```tsx\nexp"}, internal=True)
    doc = await ripple.call("generations:get", {"id": gen}, user=alice)
    assert doc["rawCode"] == "```tsx\nexp" and doc["status"] == "pending"
    final = {"id": gen, "status": "success", "code": "final", "rawCode": "final"}
    await ripple.call("generations:complete", final, internal=True)
    assert not await ripple.call("generations:updatePartial", {"id": gen, "rawCode": "late"}, internal=True)
    assert (await ripple.call("generations:get", {"id": gen}, user=alice))["rawCode"] == "final"


# Public reads: signed in, own generations only.


async def test_get_requires_sign_in_and_ownership(ripple: RippleServer, alice: str, bob: str) -> None:
    gen = await store(ripple, alice)
    assert (await ripple.call("generations:get", {"id": gen}, user=alice))["_id"] == gen
    with pytest.raises(AuthRequired, match="signed in"):
        await ripple.call("generations:get", {"id": gen})
    with pytest.raises(ConvexError, match=f'generation "{gen}" not found') as foreign:
        await ripple.call("generations:get", {"id": gen}, user=bob)
    missing = await pending(ripple, alice)
    await ripple.call("generations:complete", {"id": missing, "status": "failed"}, internal=True)
    with pytest.raises(ConvexError, match=f'generation "{missing}" not found') as gone:
        await ripple.call("generations:get", {"id": missing}, user=alice)
    # Another user's id and a nonexistent id are refused alike: ids do not leak.
    assert not_found_code(foreign.value) == not_found_code(gone.value) == "NOT_FOUND"


async def test_get_over_http_reports_not_found_as_error_data(ripple: RippleServer, alice: str, bob: str) -> None:
    gen = await store(ripple, alice)
    response = await ripple.http("query", "generations:get", {"id": gen}, token=ripple.token(bob), fmt="json")
    body = response.json()
    assert body["status"] == "error" and "not found" in body["errorMessage"]
    assert body["errorData"]["code"] == "NOT_FOUND"
    ok = await ripple.http("query", "generations:get", {"id": gen}, token=ripple.token(alice), fmt="json")
    assert ok.json()["value"]["_id"] == gen


async def test_get_validates_the_id(ripple: RippleServer, alice: str) -> None:
    with pytest.raises(IdError, match=r'"id" must be Id\("generations"\)'):
        await ripple.call("generations:get", {"id": "nope"}, user=alice)
    with pytest.raises(RippleError, match='missing required argument "id"'):
        await ripple.call("generations:get", {}, user=alice)


async def test_list_pages_own_generations_newest_first(ripple: RippleServer, alice: str, bob: str) -> None:
    mine = [await store(ripple, alice, prompt=f"p{i}") for i in range(5)]
    await store(ripple, bob)
    first = await ripple.call("generations:list", {"paginationOpts": {"numItems": 2, "cursor": None}}, user=alice)
    assert [d["_id"] for d in first["page"]] == mine[::-1][:2] and not first["isDone"]
    rest = await ripple.call(
        "generations:list", {"paginationOpts": {"numItems": 10, "cursor": first["continueCursor"]}}, user=alice
    )
    assert [d["_id"] for d in rest["page"]] == mine[::-1][2:] and rest["isDone"]
    bobs = await ripple.call("generations:list", {"paginationOpts": {"numItems": 10, "cursor": None}}, user=bob)
    assert len(bobs["page"]) == 1 and bobs["page"][0]["_id"] not in mine
    with pytest.raises(AuthRequired):
        await ripple.call("generations:list", {"paginationOpts": {"numItems": 2, "cursor": None}})
    with pytest.raises(RippleError, match='missing required argument "paginationOpts"'):
        await ripple.call("generations:list", {}, user=alice)


async def test_list_by_parent_returns_children_oldest_first(ripple: RippleServer, alice: str) -> None:
    parent = await store(ripple, alice)
    children = [await store(ripple, alice, parentGenerationId=parent, refinementPrompt=f"r{i}") for i in range(3)]
    await store(ripple, alice)  # unrelated
    await store(ripple, alice, parentGenerationId=children[0])  # a grandchild is not a child
    got = await ripple.call("generations:listByParent", {"parentId": parent}, user=alice)
    assert [d["_id"] for d in got] == children
    assert [d["refinementPrompt"] for d in got] == ["r0", "r1", "r2"]
    assert await ripple.call("generations:listByParent", {"parentId": children[2]}, user=alice) == []


async def test_list_by_parent_refuses_other_users_and_bad_ids(ripple: RippleServer, alice: str, bob: str) -> None:
    parent = await store(ripple, alice)
    await store(ripple, alice, parentGenerationId=parent)
    with pytest.raises(ConvexError, match="not found"):
        await ripple.call("generations:listByParent", {"parentId": parent}, user=bob)
    with pytest.raises(AuthRequired):
        await ripple.call("generations:listByParent", {"parentId": parent})
    with pytest.raises(IdError, match=r'"parentId" must be Id\("generations"\)'):
        await ripple.call("generations:listByParent", {"parentId": "x"}, user=alice)
    with pytest.raises(RippleError, match='unexpected argument "parent_id"'):
        await ripple.call("generations:listByParent", {"parent_id": parent}, user=alice)


async def test_list_by_parent_leaves_out_children_of_other_users(ripple: RippleServer, alice: str, bob: str) -> None:
    parent = await store(ripple, alice)
    own = await store(ripple, alice, parentGenerationId=parent)
    await store(ripple, bob, parentGenerationId=parent)  # only possible by writing directly
    got = await ripple.call("generations:listByParent", {"parentId": parent}, user=alice)
    assert [d["_id"] for d in got] == [own]


async def test_refinement_chain_is_root_first(ripple: RippleServer, alice: str) -> None:
    ids = await chain_of(ripple, alice, 4)
    got = await ripple.call("generations:getRefinementChain", {"generationId": ids[-1]}, user=alice)
    assert [d["_id"] for d in got] == ids
    assert [d.get("refinementPrompt") for d in got] == [None, "r1", "r2", "r3"]
    middle = await ripple.call("generations:getRefinementChain", {"generationId": ids[1]}, user=alice)
    assert [d["_id"] for d in middle] == ids[:2]
    root = await ripple.call("generations:getRefinementChain", {"generationId": ids[0]}, user=alice)
    assert [d["_id"] for d in root] == ids[:1]


async def test_refinement_chain_survives_a_cycle_written_in_sql(ripple: RippleServer, alice: str) -> None:
    a, b, c = await chain_of(ripple, alice, 3)
    await sql(ripple, "UPDATE generations SET parent_generation_id = $1 WHERE _id = $2", c, a)  # a → c → b → a
    got = await ripple.call("generations:getRefinementChain", {"generationId": c}, user=alice)
    assert [d["_id"] for d in got] == [a, b, c]  # each once, ending at the one asked for
    await sql(ripple, "UPDATE generations SET parent_generation_id = _id WHERE _id = $1", b)  # b → b
    got = await ripple.call("generations:getRefinementChain", {"generationId": b}, user=alice)
    assert [d["_id"] for d in got] == [b]


async def test_refinement_chain_is_capped(ripple: RippleServer, alice: str) -> None:
    ids = await chain_of(ripple, alice, MAX_CHAIN_LENGTH + 5)
    got = await ripple.call("generations:getRefinementChain", {"generationId": ids[-1]}, user=alice)
    assert MAX_CHAIN_LENGTH == 50 and len(got) == 50
    assert [d["_id"] for d in got] == ids[-50:]  # the newest 50, still root-most first


async def test_refinement_chain_refuses_others_and_stops_at_foreign_ancestors(
    ripple: RippleServer, alice: str, bob: str
) -> None:
    ids = await chain_of(ripple, alice, 3)
    with pytest.raises(ConvexError, match="not found"):
        await ripple.call("generations:getRefinementChain", {"generationId": ids[-1]}, user=bob)
    with pytest.raises(AuthRequired):
        await ripple.call("generations:getRefinementChain", {"generationId": ids[-1]})
    bob = await token_of(ripple, bob)
    await sql(ripple, "UPDATE generations SET user_id = $1 WHERE _id = $2", bob, ids[0])
    got = await ripple.call("generations:getRefinementChain", {"generationId": ids[-1]}, user=alice)
    assert [d["_id"] for d in got] == ids[1:]
    await sql(ripple, "DELETE FROM generations WHERE _id = $1", ids[1])  # a gap in the chain
    got = await ripple.call("generations:getRefinementChain", {"generationId": ids[-1]}, user=alice)
    assert [d["_id"] for d in got] == ids[2:]
    with pytest.raises(IdError):
        await ripple.call("generations:getRefinementChain", {"generationId": "zzz"}, user=alice)


async def test_create_pending_takes_only_storage_ids_as_reference_images(ripple: RippleServer, alice: str) -> None:
    generation = await store(ripple, alice)
    with pytest.raises(IdError, match=r'referenceImageIds.*got an id of table "generations"') as wrong_table:
        await pending(ripple, alice, referenceImageIds=[generation])
    assert 'Id("_storage")' in str(wrong_table.value), str(wrong_table.value)
    with pytest.raises(IdError, match=r'referenceImageIds.*Id\("_storage"\)'):
        await pending(ripple, alice, referenceImageIds=["not-an-id"])
    assert await sql(ripple, "SELECT count(*) FROM generations WHERE user_id = $1", await token_of(ripple, alice)) == 1
