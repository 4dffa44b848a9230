"""The console's Jinja environment: autoescaped HTML, strict about undefined names, and the few filters
the templates format figures with (moments with separators, times in UTC, signed changes)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

import ledger
from entitlements.schemas import is_user_id

SHORT_ID_CHARS = 8
MINUS = "\u2212"


def moments(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def delta(value: int) -> str:
    if value > 0:
        return f"+{value:,}"
    if value < 0:
        return f"{MINUS}{-value:,}"
    return "0"


def when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def short(value: str) -> str:
    return value if len(value) <= SHORT_ID_CHARS else value[:SHORT_ID_CHARS] + "…"


def person(actor: str) -> str:
    """The person of an actor `key:{id}:{name}`: the key's name."""
    parts = actor.split(":", 2)
    return parts[2] if len(parts) == 3 and parts[0] == "key" else actor


def balance_series(items: Sequence[ledger.JournalItem]) -> dict[str, list[Any]]:
    """The journal page's available balance after each transaction, oldest first, for the chart."""
    ordered = list(reversed(items))
    return {
        "labels": [f"#{item.transaction_id} {item.kind}" for item in ordered],
        "values": [item.available_after for item in ordered],
    }


def kind_series(totals: Sequence[Any]) -> dict[str, list[Any]]:
    return {
        "labels": [total.kind for total in totals],
        "stripe": [total.stripe_moments for total in totals],
        "ledger": [total.ledger_moments for total in totals],
    }


# The roll-forward's flows in the order the page reads them: into the liability, then out of it.
INFLOWS = ("sold", "subscription_grants", "promotions", "refunds_to_users", "clawback_reversals")
OUTFLOWS = ("revenue", "breakage", "clawbacks")


def flow_rows(report: Any) -> list[tuple[str, int, str]]:
    """(flow, moments, sign) for the roll-forward's table: + for what came in, - for what went out."""
    return [(name, getattr(report.flows, name), "+") for name in INFLOWS] + [
        (name, getattr(report.flows, name), MINUS) for name in OUTFLOWS
    ]


def flow_series(report: Any) -> dict[str, list[Any]]:
    """The period's flows for the chart: inflows upward, outflows downward."""
    return {
        "labels": [name.replace("_", " ") for name in (*INFLOWS, *OUTFLOWS)],
        "values": [getattr(report.flows, name) for name in INFLOWS]
        + [-getattr(report.flows, name) for name in OUTFLOWS],
    }


def environment(directory: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        moments=moments,
        delta=delta,
        when=when,
        short=short,
        person=person,
        valid_user_id=is_user_id,
        balance_series=balance_series,
        kind_series=kind_series,
        flow_rows=flow_rows,
        flow_series=flow_series,
    )
    return env
