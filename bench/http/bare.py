"""The baseline of every HTTP ratio: Litestar on the same stack (granian, msgspec) doing nothing else.

GET answers a small JSON object; POST decodes a small msgspec Struct and answers it, as a quote does.
"""

from __future__ import annotations

import msgspec
from litestar import Litestar, get, post


class Small(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    mode: str
    resolution: str
    duration_s: int
    audio: bool


@get("/", sync_to_thread=False)
def read() -> dict[str, str]:
    return {"status": "ok"}


@post("/", status_code=200, sync_to_thread=False)
def echo(data: Small) -> Small:
    return data


def create_bare_app() -> Litestar:
    return Litestar(route_handlers=[read, echo], openapi_config=None, logging_config=None)
