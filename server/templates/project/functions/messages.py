"""`messages:list` and `messages:send`: a chat channel. Clients subscribe to `messages:list`; every `send`
reaches them at once."""

from typing import Any

from server import Doc, Id, mutation, query


@query(name="list")
async def list_messages(ctx: Any, channel: str) -> list[Doc("messages")]:
    """The channel's messages, oldest first."""
    return await ctx.db.query("messages").with_index("by_channel", lambda q: q.eq("channel", channel)).collect()


@mutation
async def send(ctx: Any, channel: str, author: str, body: str) -> Id("messages"):
    """Add a message; returns its id."""
    return await ctx.db.insert("messages", {"channel": channel, "author": author, "body": body})
