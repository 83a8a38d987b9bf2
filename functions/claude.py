"""Claude for the app modules: where its settings come from, one streamed reply, and the code inside a reply.

Registers no functions. Every failure of a call (not configured, refused, overloaded, timed out, cut off)
becomes a `ClaudeError` whose message says what happened and what to do, so actions can show it as is.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import httpx2

from server import ConvexError
from server.config import Settings

__all__ = ["Claude", "ClaudeError", "claude_settings", "extract_code"]

# Room for a whole animation component in one reply.
MAX_TOKENS = 8192
# The SDK retries connection errors, 408, 409, 429 and 5xx (529 overloaded included) this often, with backoff.
MAX_RETRIES = 2

OnText = Callable[[str], Awaitable[None]]


class ClaudeError(ConvexError):
    """Claude could not give an answer; the message (also the client's `errorData`) says why."""


def claude_settings() -> Settings:
    """Read fresh on every call, as a Convex action reads `process.env`: from the environment and `.env`.

    So a key set or rotated (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL, RIPPLE_ANTHROPIC_MODEL, ...) applies to the
    next call without a restart. Functions cannot see the Settings their server was built with (`ctx` has none).
    """
    return Settings()


@dataclass(frozen=True, slots=True)
class Claude:
    api_key: str
    model: str
    base_url: str | None = None
    timeout_s: float = 120.0
    # While a reply streams, `on_text` sees it at most this often (the partial-output patches).
    patch_interval_s: float = 0.1
    max_retries: int = MAX_RETRIES

    @classmethod
    def from_settings(cls, settings: Settings) -> Claude:
        """Raises ClaudeError when no API key is set: check this before writing anything."""
        if not settings.anthropic_api_key:
            raise ClaudeError("Claude is not configured: set ANTHROPIC_API_KEY")
        return cls(
            api_key=settings.anthropic_api_key,
            model=settings.anthropic_model,
            base_url=settings.anthropic_base_url or None,
            timeout_s=settings.anthropic_timeout_s,
            patch_interval_s=settings.stream_patch_interval_s,
        )

    async def stream(self, *, system: str, messages: Sequence[dict[str, Any]], on_text: OnText | None = None) -> str:
        """Stream one reply and return its whole text; `on_text(text so far)` runs at most every patch_interval_s.

        Raises:
            ClaudeError: the API refused or failed, did not answer in `timeout_s`, the reply broke off, or it hit
                MAX_TOKENS (a truncated component is no use).
        """
        text = ""
        last_shown = float("-inf")
        try:
            async with anthropic.AsyncAnthropic(
                api_key=self.api_key, base_url=self.base_url, max_retries=self.max_retries, timeout=self.timeout_s
            ) as client:
                async with client.messages.stream(
                    model=self.model,
                    max_tokens=MAX_TOKENS,
                    system=system,
                    messages=list(messages),  # type: ignore[arg-type]
                ) as stream:
                    async for delta in stream.text_stream:
                        text += delta
                        if on_text is not None and time.monotonic() - last_shown >= self.patch_interval_s:
                            last_shown = time.monotonic()
                            await on_text(text)
                    stop_reason = (await stream.get_final_message()).stop_reason
        except (anthropic.AnthropicError, httpx2.HTTPError, httpx.HTTPError) as exc:
            raise ClaudeError(self._describe(exc)) from exc
        if stop_reason == "max_tokens":
            raise ClaudeError(f"Claude's reply was cut off at {MAX_TOKENS} tokens; ask for something smaller")
        return text

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, (anthropic.APITimeoutError, httpx2.TimeoutException, httpx.TimeoutException)):
            return f"Claude did not answer within {self.timeout_s:g} s (RIPPLE_ANTHROPIC_TIMEOUT_S); try again"
        if isinstance(exc, anthropic.APIStatusError):
            kind, message = _error_body(exc.body)
            status = f"HTTP {exc.status_code} {kind}" if exc.status_code >= 400 else kind  # mid-stream: no status
            return f"Claude API error ({status}): {message}; {_HINTS.get(kind, 'try again')}"
        if isinstance(exc, anthropic.APIConnectionError):
            return f"Could not reach Claude at {self.base_url or 'the default API URL'}: {exc}; try again"
        return f"Claude's reply failed mid-way ({type(exc).__name__}: {exc}); try again"


# What to do about each of Anthropic's error types.
_HINTS = {
    "authentication_error": "check ANTHROPIC_API_KEY",
    "permission_error": "check what the API key may use",
    "invalid_request_error": "the request was refused as malformed",
    "rate_limit_error": "rate limited; try again in a minute",
    "overloaded_error": "Claude is overloaded; try again in a moment",
}


def _error_body(body: Any) -> tuple[str, str]:
    """(error type, message) from Anthropic's `{"type": "error", "error": {"type", "message"}}`."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("type", "api_error")), str(error.get("message", ""))
    return "api_error", str(body)


# The first fenced block (```tsx, ```jsx, ``` ...); a block still being streamed runs to the end of the text.
_FENCE = re.compile(r"```[\w+.-]*[^\S\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(reply: str, *, partial: bool = False) -> str | None:
    """The code in Claude's reply: its first fenced block, else (a finished reply) the whole reply.

    While a reply streams (`partial`), None until a block has opened: the prose before it is not code.
    """
    match = _FENCE.search(reply)
    if match is not None:
        return match.group(1).strip("\n")
    if partial:
        return None
    return reply.strip()
