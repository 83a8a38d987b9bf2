"""The seed project's HTTP actions (Convex's `convex/http.ts`), served under the site prefix (`/http` by default).

- `GET /health`: a liveness answer for uptime checks that should not need credentials.
- `POST /videos/progress`: the video worker's progress webhook. Workers that cannot speak the Convex protocol
  POST the same JSON `videos:updateJobProgress` takes (`{"twitchId", "jobId", "progressPercentage", ...}`) with the
  shared secret, the admin key, in `Authorization: Convex <admin key>`; subscribers see the change at once.
- `POST /replicate/webhook?imageId=<shotImages id>`: the image API's finished predictions (functions/
  image_generation.py), signed as standard-webhooks specifies with RIPPLE_REPLICATE_WEBHOOK_SECRET. A delivery that
  is unsigned, wrongly signed or stale is refused with 401 and changes nothing; a repeated one is answered 200 and
  changes nothing, so the provider's retries are harmless.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from functions import image_generation
from functions.replicate import WEBHOOK_PATH, WebhookRefused, image_api_settings, verify_webhook
from server import ConvexError, HttpRouter, http_action
from server.errors import RippleError, describe

http = HttpRouter()


def _json(status: int, body: Any) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@http_action
async def health(ctx: Any, request: Request) -> Response:
    return _json(200, {"status": "ok"})


@http_action
async def video_progress(ctx: Any, request: Request) -> Response:
    """Refusals the worker can act on (bad secret, bad JSON, an unknown or finished video) are 4xx with a message;
    anything else raises, and the caller gets a 500 with the request id that finds the traceback."""
    if not ctx.auth.is_admin:
        return _json(
            401,
            {
                "code": "Unauthorized",
                "message": "POST /videos/progress needs the shared secret: send 'Authorization: Convex <admin key>'",
            },
        )
    try:
        report = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        report = None
    if not isinstance(report, dict):
        return _json(
            400,
            {"code": "BadJsonBody", "message": 'the body must be a JSON object: {"twitchId", "jobId", ...}'},
        )
    try:
        await ctx.run_mutation("videos:updateJobProgress", report)
    except ConvexError as exc:
        status = 404 if isinstance(exc.data, dict) and exc.data.get("code") == "NOT_FOUND" else 409
        return _json(status, exc.data)
    except RippleError as exc:  # bad arguments: the message names the field
        return _json(400, {"code": exc.code, "message": describe(exc)})
    return _json(200, {"status": "ok"})


@http_action
async def replicate_webhook(ctx: Any, request: Request) -> Response:
    """2xx tells the provider to stop retrying: so anything this deployment will never accept (a row that does not
    exist, a body that is no prediction) is 4xx with a message, and only a failure here is a 500."""
    secret = image_api_settings().webhook_secret
    if not secret:
        return _json(
            503,
            {
                "code": "NotConfigured",
                "message": f"{WEBHOOK_PATH} cannot check signatures: set RIPPLE_REPLICATE_WEBHOOK_SECRET",
            },
        )
    body = await request.body()
    try:
        verify_webhook(secret, request.headers, body)
    except WebhookRefused as exc:
        return _json(401, {"code": "BadSignature", "message": f"webhook refused: {exc}"})
    image_id = request.query_params.get("imageId")
    if not image_id:
        return _json(
            400, {"code": "MissingImageId", "message": f"the webhook URL must end in {WEBHOOK_PATH}?imageId=<id>"}
        )
    try:
        args = image_generation.prediction_args(image_id, orjson.loads(body))
    except (orjson.JSONDecodeError, ValueError) as exc:
        return _json(400, {"code": "BadJsonBody", "message": str(exc)})
    try:
        outcome = await ctx.run_mutation(image_generation.prediction_finished, args)
    except ConvexError as exc:
        return _json(409, exc.data)
    except RippleError as exc:  # an imageId that names no shot image
        return _json(400, {"code": exc.code, "message": describe(exc)})
    return _json(200, {"status": outcome})


http.route(path="/health", method="GET", handler=health)
http.route(path="/videos/progress", method="POST", handler=video_progress)
http.route(path=WEBHOOK_PATH, method="POST", handler=replicate_webhook)
