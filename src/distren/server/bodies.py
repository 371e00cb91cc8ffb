"""Reading request bodies with a stall timeout, for every route that reads one: package
uploads (POST /jobs), a client's JSON body, and the peer API's frame outputs and JSON bodies.

uvicorn waits for a body as long as the client keeps the connection open: a client or a peer
that stops sending would hold the connection, an upload file and a place in the connection
limit for ever. Here each piece of the body must arrive within `stall` seconds
(`--body-timeout`), else 408 `request_timeout`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import Request

from ..errors import RequestTimeout, TooLarge


async def body_chunks(request: Request, stall: float) -> AsyncIterator[bytes]:
    """The request body, piece by piece; RequestTimeout when no data arrives for `stall` s."""
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), stall)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise RequestTimeout(f"no body data for {stall:g} s; upload abandoned") from None
        if chunk:  # the stream ends with an empty chunk
            yield chunk


async def small_body(request: Request, limit: int, stall: float, what: str = "request body") -> bytes:
    """The whole body of a request that carries a small one (JSON): TooLarge beyond `limit`
    bytes, RequestTimeout when it stalls."""
    body = b""
    async for chunk in body_chunks(request, stall):
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"{what} exceeds {limit} bytes")
    return body
