"""The floor figures of the HTTP benchmark (the app is `bench/http/floor.py`) and what they say of each goal.

Each goal of issue 12 is a ratio of an endpoint to the bare POST (or to pgbench tpcb-like). Each endpoint
must do at least a floor's database work on the bare app's stack, so the floor's own ratio in the same
round is the goal's ceiling here: a floor below a goal means the goal cannot be met as written on this stack
and machine, whatever the endpoint's Python costs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench.http import wrk

FLOOR_APP = "bench.http.floor:create_floor_app"
READY_PATH = "/read/bench-floor-ready"
SMALL_BODY = '{"mode":"advanced","resolution":"720p","duration_s":8,"audio":true}'


def scenarios(users: list[str]) -> dict[str, tuple[str, str, wrk.Request]]:
    """name → (server "floor", label, request), in the shape of `bench.http.run.scenarios`."""
    json_type = {"Content-Type": "application/json"}
    keyed = {"Idempotency-Key": "{key}"}
    spread = f"{len(users):,} users"
    return {
        "floor_read_get": (
            "floor",
            f"floor: GET + one pooled read, {spread}",
            wrk.Request(method="GET", path="/read/{user}", expected_status=200, users=users),
        ),
        "floor_read": (
            "floor",
            f"floor: POST + one pooled read, {spread}",
            wrk.Request(
                method="POST", path="/read/{user}", expected_status=200, headers=json_type, body=SMALL_BODY, users=users
            ),
        ),
        "floor_write": (
            "floor",
            "floor: POST + one durable INSERT, own commit",
            wrk.Request(
                method="POST",
                path="/write/{user}",
                expected_status=201,
                headers=json_type | keyed,
                body=SMALL_BODY,
                users=users,
            ),
        ),
        "floor_group": (
            "floor",
            "floor: POST + one INSERT, group commit",
            wrk.Request(
                method="POST",
                path="/group/{user}",
                expected_status=201,
                headers=json_type | keyed,
                body=SMALL_BODY,
                users=users,
            ),
        ),
    }


@dataclass(frozen=True, kw_only=True)
class Ceiling:
    """One goal beside the floor that bounds it: `floor_value` is the floor's ratio, measured the goal's way."""

    goal: str
    goal_value: float
    at_most: bool
    floor: str
    why: str
    endpoint_value: float | None
    floor_value: float | None

    @property
    def verdict(self) -> str:
        if self.endpoint_value is not None and (
            self.endpoint_value <= self.goal_value if self.at_most else self.endpoint_value >= self.goal_value
        ):
            return "met"
        if self.floor_value is None:
            return "no floor figure"
        reachable = self.floor_value <= self.goal_value if self.at_most else self.floor_value >= self.goal_value
        return "unmet, reachable" if reachable else "UNREACHABLE as written"


def _median(values: Iterable[float]) -> float | None:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2] if ordered else None


def _ratio(rounds: list[dict[str, Any]], name: str, baseline: str) -> float | None:
    return _median(
        figures[name].per_s / figures[baseline].per_s
        for figures in rounds
        if name in figures and baseline in figures and figures[baseline].per_s
    )


def _over_tpcb(rounds: list[dict[str, Any]], tpcb: list[Any], name: str) -> float | None:
    return _median(
        figures[name].per_s / result.tps
        for figures, result in zip(rounds, tpcb, strict=False)
        if name in figures and result.tps
    )


def _p99(rounds: list[dict[str, Any]], name: str) -> float | None:
    return _median(figures[name].result.p99_ms for figures in rounds if name in figures)


def ceilings(rounds: list[dict[str, Any]], tpcb: list[Any]) -> list[Ceiling]:
    """Every goal of issue 12 with the floor that bounds it (medians of the rounds' ratios)."""

    def of_bare(value: float, endpoint: str, floor: str, why: str) -> Ceiling:
        return Ceiling(
            goal=f"{endpoint} / bare_post >= {value:g}",
            goal_value=value,
            at_most=False,
            floor=floor,
            why=why,
            endpoint_value=_ratio(rounds, endpoint, "bare_post"),
            floor_value=_ratio(rounds, floor, "bare_post"),
        )

    # A grant must be durable before its answer: its floor is the better of its own commit and a shared one.
    writes = [_ratio(rounds, name, "bare_post") for name in ("floor_write", "floor_group")]
    grants = dataclasses.replace(
        of_bare(0.5, "grants", "floor_write | floor_group", "a grant is a durable write"),
        floor_value=max((value for value in writes if value is not None), default=None),
    )
    return [
        of_bare(0.7, "quotes", "bare_post", "a quote is pure work: the bare POST is its floor"),
        of_bare(0.5, "pricing", "bare_get", "a static document: the bare GET is its floor"),
        of_bare(0.5, "entitlements", "floor_read_get", "a balance must be read fresh"),
        grants,
        of_bare(0.5, "generations", "floor_group", "durable before its answer, commits shared"),
        of_bare(0.5, "generations_hot", "floor_group", "as generations (no hot-row lock)"),
        Ceiling(
            goal="generations / pgbench tpcb >= 1",
            goal_value=1.0,
            at_most=False,
            floor="floor_group",
            why="the floor's rate over the same round's tpcb",
            endpoint_value=_over_tpcb(rounds, tpcb, "generations"),
            floor_value=_over_tpcb(rounds, tpcb, "floor_group"),
        ),
        Ceiling(
            goal="generations p99 ms <= 50",
            goal_value=50.0,
            at_most=True,
            floor="floor_group",
            why="the floor's p99 at the same connections",
            endpoint_value=_p99(rounds, "generations"),
            floor_value=_p99(rounds, "floor_group"),
        ),
    ]


def _cpu_us(rounds: list[dict[str, Any]], name: str) -> float | None:
    """Server and PostgreSQL CPU per request: steadier than the rate on a machine others share."""
    return _median(
        (figures[name].server_cores + figures[name].postgres_cores) / figures[name].per_s * 1e6
        for figures in rounds
        if name in figures and figures[name].per_s
    )


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def render(rounds: list[dict[str, Any]], tpcb: list[Any]) -> list[str]:
    if not rounds or not any(name.startswith("floor_") for name in rounds[0]):
        return []
    lines = ["", "  floors (the least database work of each endpoint, bare stack), ratios to bare POST and tpcb:"]
    for name in [name for name in rounds[0] if name.startswith("floor_")]:
        cpu_us, bare_us = _cpu_us(rounds, name), _cpu_us(rounds, "bare_post")
        by_cpu = bare_us / cpu_us if cpu_us and bare_us else None
        lines.append(
            f"    {name:<18}{_shown(_ratio(rounds, name, 'bare_post')):>8} of bare POST"
            f"{_shown(_over_tpcb(rounds, tpcb, name)):>8} of tpcb   p99 {_shown(_p99(rounds, name))} ms"
            f"   CPU {cpu_us or 0:,.0f} us/request (bare POST {bare_us or 0:,.0f}: {_shown(by_cpu)})"
        )
    lines += ["", "  each goal's ceiling (the floor it cannot beat), median of the rounds:"]
    for ceiling in ceilings(rounds, tpcb):
        lines.append(
            f"    {ceiling.goal:<36} endpoint {_shown(ceiling.endpoint_value):>7}"
            f"  floor {_shown(ceiling.floor_value):>7} ({ceiling.floor})  {ceiling.verdict}"
        )
    edge_us = _edge_us(rounds)
    if edge_us is not None:
        bare_us = _cpu_us(rounds, "bare_post") or 0.0
        lines += [
            "",
            f"  Moments' edge (auth, middleware, Litestar's route work: pricing's CPU less the bare GET's) is "
            f"{edge_us:,.0f} us a request; each floor with it, by CPU, as a share of the bare POST's:",
        ]
        for name in [name for name in rounds[0] if name.startswith("floor_")]:
            floor_us = _cpu_us(rounds, name)
            if floor_us:
                lines.append(f"    {name:<18}{_shown(bare_us / (floor_us + edge_us)):>8}")
    return lines


def _edge_us(rounds: list[dict[str, Any]]) -> float | None:
    pricing_us, bare_get_us = _cpu_us(rounds, "pricing"), _cpu_us(rounds, "bare_get")
    if pricing_us is None or bare_get_us is None:
        return None
    return max(0.0, pricing_us - bare_get_us)


def to_json(rounds: list[dict[str, Any]], tpcb: list[Any]) -> list[dict[str, object]]:
    return [{**ceiling.__dict__, "verdict": ceiling.verdict} for ceiling in ceilings(rounds, tpcb)]
