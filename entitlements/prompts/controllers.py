"""POST /v1/prompts/advice."""

from __future__ import annotations

from litestar import Controller, post
from litestar.params import JSONBody

from entitlements.http import PriceTable
from entitlements.keys import ROLES
from entitlements.prompts import service
from entitlements.prompts.schemas import AdviceCreate, AdviceOut


class PromptsController(Controller):
    tags = ["prompts"]
    # Quotes and advice compute and change nothing: they count as reads.
    opt = {"roles": ROLES, "rate_class": "reads"}

    @post(
        "/v1/prompts/advice",
        operation_id="advisePrompt",
        summary="The prompting guide's advice on a prompt (free, never stored, never a gate)",
        status_code=200,
    )
    async def advise_prompt(self, data: JSONBody[AdviceCreate], price_table: PriceTable) -> AdviceOut:
        return service.advise(price_table, data)
