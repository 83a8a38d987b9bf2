"""Reference images for Claude: `_storage` files read in an action and turned into Messages API image blocks.

Claude takes png, jpeg, gif and webp, each at most 5 MB, as base64 `image` blocks placed before the text they
illustrate. A file that is missing, of another type or too large is refused here with a message that names the
file and says what to do, so the generation fails cleanly instead of Claude answering a 400.
"""

from __future__ import annotations

import base64
from typing import Any

from functions import generations
from functions.claude import ClaudeError

__all__ = ["MAX_IMAGE_BYTES", "MAX_REFERENCE_IMAGES", "SUPPORTED_MEDIA_TYPES", "ReferenceImageError", "image_blocks"]

# The Messages API's own limits: these media types, 5 MB per image.
SUPPORTED_MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
MAX_IMAGE_BYTES = 5 * 1024 * 1024
# Far below the API's 100 per request: more references than this only cost tokens.
MAX_REFERENCE_IMAGES = 20


class ReferenceImageError(ClaudeError):
    """A reference image Claude cannot take; the message (also the client's `errorData`) says which and why."""


def media_type_of(content_type: str | None) -> str | None:
    """`image/PNG; foo=bar` → `image/png`; None when the upload gave no type."""
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


async def image_blocks(ctx: Any, storage_ids: list[str]) -> list[dict[str, Any]]:
    """One base64 image block per storage id, in order.

    Raises:
        ReferenceImageError: too many ids, or a file that is gone, of a type Claude does not take, or too large.
    """
    if len(storage_ids) > MAX_REFERENCE_IMAGES:
        raise ReferenceImageError(
            f"{len(storage_ids)} reference images is more than the {MAX_REFERENCE_IMAGES} allowed; pass fewer"
        )
    files = await ctx.run_query(generations.reference_files, {"ids": storage_ids})
    blocks = []
    for storage_id, file in zip(storage_ids, files, strict=True):
        if file is None:
            raise ReferenceImageError(f'reference image "{storage_id}" does not exist (any more); upload it again')
        media_type = media_type_of(file.get("contentType"))
        if media_type not in SUPPORTED_MEDIA_TYPES:
            raise ReferenceImageError(
                f'reference image "{storage_id}" is {media_type or "of no declared type"}; Claude takes only '
                f"{', '.join(SUPPORTED_MEDIA_TYPES)}: convert it and upload it with that Content-Type"
            )
        if file["size"] > MAX_IMAGE_BYTES:
            raise ReferenceImageError(_too_large(storage_id, int(file["size"])))
        data = await ctx.storage.get(storage_id)
        if data is None:
            raise ReferenceImageError(f'reference image "{storage_id}" does not exist (any more); upload it again')
        if len(data) > MAX_IMAGE_BYTES:
            raise ReferenceImageError(_too_large(storage_id, len(data)))
        encoded = base64.b64encode(data).decode("ascii")
        blocks.append({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": encoded}})
    return blocks


def _too_large(storage_id: str, size: int) -> str:
    return (
        f'reference image "{storage_id}" is {size} bytes, over Claude\'s {MAX_IMAGE_BYTES}-byte limit per image; '
        "scale it down and upload it again"
    )
