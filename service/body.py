"""Reading a request body within bounds: its size (declared and streamed) and its arrival time.

Every endpoint that reads a body reads it here, so a body over its cap or slower than
RANKER_BODY_TIMEOUT_S is refused the same way on each of them.
"""

from __future__ import annotations

import asyncio

from fastapi import Request
from starlette.requests import ClientDisconnect

from service.errors import ClientClosed, PayloadTooLarge, RequestTimeout


def refuse_declared_over(request: Request, limit: int) -> None:
    """413 before a byte of the body is read, when its declared length is over `limit`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes; at most {limit}")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, refused as soon as it passes `limit` bytes, read within `timeout_s`; a client
    that hangs up mid-body is ClientClosed."""
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"body over {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s") from None
    except ClientDisconnect:
        raise ClientClosed("the client closed the connection before sending its body") from None
    return b"".join(chunks)
