"""What the ASGI test apps share."""

import asyncio
from typing import Any, Awaitable

from fastapi.responses import JSONResponse


async def cancelled_when_client_leaves(request: Any, work: Awaitable[Any], answer: Any) -> Any:
    """Run *work* (a query) and return *answer*; cancel it when the client goes away (the endpoint
    watches ``request.is_disconnected()``, as a streaming response does) and answer 499."""
    query = asyncio.ensure_future(work)
    while not query.done():
        if await request.is_disconnected():
            query.cancel()
            break
        await asyncio.wait({query}, timeout=0.05)
    try:
        await query
    except asyncio.CancelledError:
        return JSONResponse({"cancelled": True}, status_code=499)
    return answer
