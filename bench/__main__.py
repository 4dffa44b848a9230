"""`python -m bench`: every benchmark, one after another (today: the ledger's)."""

from __future__ import annotations

import sys

from bench.ledger.run import main as ledger_main

BENCHMARKS = {"ledger": ledger_main}


def main(argv: list[str]) -> int:
    status = 0
    for run in BENCHMARKS.values():
        status = max(status, run(argv))
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
