"""Real PNG files for tests: a browser decodes them and Claude's and the image API's fakes accept them, so a test
that shows or sends an image proves the bytes went through (a src or a content type alone proves nothing)."""

from __future__ import annotations

import struct
import zlib

__all__ = ["png"]


def png(width: int = 1, height: int = 1, rgb: tuple[int, int, int] = (255, 0, 0), *, comment: str = "") -> bytes:
    """An 8-bit RGB PNG of one colour; `comment` goes in a tEXt chunk, to tell images of one size apart."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))  # filter byte 0, then the pixels
    text = chunk(b"tEXt", b"Comment\x00" + comment.encode()) if comment else b""
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + text + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )
