"""Answers whose status depends on the outcome: done now (the route's status) or waiting for approval (202)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Response
from litestar.status_codes import HTTP_202_ACCEPTED

from entitlements.approvals import ApprovalPending


def answer_response(done: msgspec.Struct | None, pending: ApprovalPending | None, status: int) -> Response[Any]:
    if pending is not None:
        return Response(pending, status_code=HTTP_202_ACCEPTED)
    assert done is not None, "an answer is either done or pending"
    return Response(done, status_code=status)
