"""Prompt advice: the product's prompting guide as free advice on a prompt, never a gate.

advice.py (the guide's rules, pure), service.py (the request against the price table, the answer),
schemas.py (bodies), controllers.py (the route).
"""

from entitlements.prompts.schemas import AdviceItem, AdviceOut
from entitlements.prompts.service import advice_items, configure_cache, request_json_schema

__all__ = ["AdviceItem", "AdviceOut", "advice_items", "configure_cache", "request_json_schema"]
