"""The app's functions on a real Ripple server and a fresh database (the `ripple_app` fixture of Ripple's pytest
plugin; pytest.ini names the modules and the schema it serves)."""

import pytest


@pytest.mark.asyncio
async def test_a_subscriber_sees_each_message(ripple_app):
    client = ripple_app.anonymous()
    messages = await client.subscribe("messages:list", {"channel": "general"})
    assert await messages.next() == []
    await client.mutation("messages:send", {"channel": "general", "author": "ada", "body": "hello"})
    assert [(m["author"], m["body"]) for m in await messages.next()] == [("ada", "hello")]


@pytest.mark.asyncio
async def test_channels_are_apart(ripple_app):
    client = ripple_app.anonymous()
    await client.mutation("messages:send", {"channel": "general", "author": "ada", "body": "hello"})
    assert await client.query("messages:list", {"channel": "random"}) == []
