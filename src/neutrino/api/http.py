"""HTTP plumbing shared by the Neutron API and the identity service; imports nothing of neutrino."""

from __future__ import annotations

from starlette.requests import Request


def declared_too_large(request: Request, limit: int) -> bool:
    """The body announces (Content-Length) more than ``limit`` bytes: refuse before reading any of it."""
    length = request.headers.get("content-length", "")
    return length.isdigit() and int(length) > limit


async def read_capped(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it passes ``limit`` bytes: by its Content-Length before anything is
    read, and by counting while a chunked body streams in, so an oversized body is never held in memory."""
    if declared_too_large(request, limit):
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
