"""A Replicate-style image API for the app modules: its settings, starting a prediction, checking a webhook.

Registers no functions. Plain HTTP through httpx (Replicate's REST API is small, and its SDK is not a dependency):
`POST {base}/v1/predictions` with a bearer token starts a prediction; the provider POSTs the finished prediction to
the webhook URL given, signed as standard-webhooks specifies (Replicate's scheme). Every failure of a call becomes a
`ReplicateError` whose message says what happened and what to do, so it can be shown on the image as is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from server import ConvexError
from server.config import Settings

__all__ = [
    "DEFAULT_MODEL",
    "WEBHOOK_PATH",
    "WEBHOOK_TOLERANCE_S",
    "ImageApi",
    "ImageApiSettings",
    "ReplicateError",
    "WebhookRefused",
    "image_api_settings",
    "sign_webhook",
    "verify_webhook",
]

DEFAULT_MODEL = "black-forest-labs/flux-schnell"
# The seed app's route for the provider's webhooks, under the site prefix (functions/http.py).
WEBHOOK_PATH = "/replicate/webhook"
# standard-webhooks refuses a timestamp this far from now either way: a captured delivery cannot be replayed later.
WEBHOOK_TOLERANCE_S = 5 * 60
_SECRET_PREFIX = "whsec_"


class ReplicateError(ConvexError):
    """The image API could not start a prediction; the message (also the client's `errorData`) says why."""


class ImageApiSettings(BaseSettings):
    """Read from the environment and `.env` when a function needs them (as a Convex action reads `process.env`), so
    a token set or rotated applies to the next call without a restart; each function reads them once."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # The names Replicate's own clients read.
    api_token: str | None = Field(default=None, validation_alias="REPLICATE_API_TOKEN")
    base_url: str = Field(default="https://api.replicate.com", validation_alias="REPLICATE_BASE_URL")
    # `whsec_...`, from Replicate's `GET /v1/webhooks/default/secret`.
    webhook_secret: str | None = Field(default=None, validation_alias="RIPPLE_REPLICATE_WEBHOOK_SECRET")
    # "owner/name" or "owner/name:version" (or a bare version id), sent as the prediction's `version`.
    model: str = Field(default=DEFAULT_MODEL, validation_alias="RIPPLE_REPLICATE_MODEL")
    # Where the provider reaches this deployment's webhook route; unset: RIPPLE_PUBLIC_URL (else the URL the server
    # listens on) + RIPPLE_SITE_PREFIX + WEBHOOK_PATH.
    webhook_url: str | None = Field(default=None, validation_alias="RIPPLE_REPLICATE_WEBHOOK_URL")
    timeout_s: float = Field(default=30.0, validation_alias="RIPPLE_REPLICATE_TIMEOUT_S")

    def missing(self) -> list[str]:
        """The variables that must still be set before images can be generated."""
        return [
            name
            for name, value in (
                ("REPLICATE_API_TOKEN", self.api_token),
                ("RIPPLE_REPLICATE_WEBHOOK_SECRET", self.webhook_secret),
            )
            if not value
        ]

    def require(self, what: str) -> None:
        """Raises ReplicateError naming every variable still unset: check this before writing anything."""
        missing = self.missing()
        if missing:
            raise ReplicateError(
                f"Image generation is not configured, so {what} is not possible: set {' and '.join(missing)} "
                "(docs/reference.md, 'Image generation')"
            )

    def resolved_webhook_url(self) -> str:
        if self.webhook_url:
            return self.webhook_url
        server = Settings()
        return (server.public_url or server.client_url()).rstrip("/") + server.site_prefix + WEBHOOK_PATH


def image_api_settings() -> ImageApiSettings:
    return ImageApiSettings()


@dataclass(frozen=True, slots=True)
class ImageApi:
    settings: ImageApiSettings

    async def start_prediction(self, prompt: str, webhook: str, extra_input: Mapping[str, Any] | None = None) -> str:
        """Start one prediction whose completion is POSTed to `webhook`; returns the prediction's id.

        Raises:
            ReplicateError: not configured, unreachable, refused (the provider's `detail` is in the message), or an
                answer without an id.
        """
        self.settings.require("starting a prediction")
        body = {
            "version": self.settings.model,
            "input": {"prompt": prompt, **(extra_input or {})},
            "webhook": webhook,
            "webhook_events_filter": ["completed"],
        }
        base = self.settings.base_url.rstrip("/")
        try:
            async with httpx.AsyncClient(timeout=self.settings.timeout_s) as client:
                response = await client.post(
                    f"{base}/v1/predictions",
                    json=body,
                    headers={"Authorization": f"Bearer {self.settings.api_token}"},
                )
        except httpx.TimeoutException:
            raise ReplicateError(
                f"The image API at {base} did not answer within {self.settings.timeout_s:g} s "
                "(RIPPLE_REPLICATE_TIMEOUT_S); try again"
            ) from None
        except httpx.HTTPError as exc:
            raise ReplicateError(f"Could not reach the image API at {base}: {exc}; try again") from None
        if response.status_code >= 400:
            raise ReplicateError(
                f"The image API refused the prediction (HTTP {response.status_code}): {_detail(response)}"
                + ("; check REPLICATE_API_TOKEN" if response.status_code in (401, 403) else "")
            )
        try:
            prediction_id = response.json()["id"]
        except (ValueError, KeyError, TypeError):
            prediction_id = None
        if not isinstance(prediction_id, str) or not prediction_id:
            raise ReplicateError(f"The image API answered HTTP {response.status_code} without a prediction id")
        return prediction_id


def _detail(response: httpx.Response) -> str:
    """Replicate's errors are problem+json: `{"title", "detail", "status"}`."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or "(no body)"
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)[:300]
    return str(body)[:300]


# Webhook signatures (standard-webhooks, as Replicate signs): HMAC-SHA256 over "id.timestamp.body", keyed by the
# base64 secret after "whsec_", sent as "v1,<base64 signature>" (several, space-separated, during a key rotation).


class WebhookRefused(Exception):
    """The delivery is not the provider's (or is stale); the message says which check failed."""


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(_SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "RIPPLE_REPLICATE_WEBHOOK_SECRET is not a webhook secret: expected 'whsec_' followed by base64, as "
            "Replicate's GET /v1/webhooks/default/secret returns it"
        ) from None


def sign_webhook(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for a delivery (the fake provider in the tests signs with it)."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify_webhook(secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> None:
    """Raises WebhookRefused unless the headers sign `body` with `secret` within WEBHOOK_TOLERANCE_S of `now`."""
    webhook_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not webhook_id or not stamp or not signatures:
        raise WebhookRefused(
            "the delivery is unsigned: webhook-id, webhook-timestamp and webhook-signature headers are required"
        )
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookRefused(f"webhook-timestamp {stamp!r} is not a whole number of seconds") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > WEBHOOK_TOLERANCE_S:
        raise WebhookRefused(
            f"webhook-timestamp {timestamp} is more than {WEBHOOK_TOLERANCE_S} s from now ({int(current)}): a stale "
            "or replayed delivery"
        )
    expected = sign_webhook(secret, webhook_id, timestamp, body).split(",", 1)[1].encode()
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return
    raise WebhookRefused("webhook-signature does not match: the body was not signed with this deployment's secret")
