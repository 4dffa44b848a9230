"""The one hook every request passes before its handler: OPTIONS, the caller's key and role, the key's rate
limit, the query.

The role check runs here rather than as a Litestar guard: Litestar copies the route handler for every
guard call, which cost about a tenth of a small request (docs/performance.md). OPTIONS is answered before
it, as a CORS preflight carries no key.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response

from entitlements.http.auth import role_guard
from entitlements.http.limits import check_rate_limit
from entitlements.http.strict import check_query, options_response


async def before_request(request: Request[Any, Any, Any]) -> Response[None] | None:
    if request.method == "OPTIONS":
        return options_response(request)
    await role_guard(request, request.route_handler)
    await check_rate_limit(request)
    check_query(request)
    return None
