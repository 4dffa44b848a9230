"""`python -m bench`: every benchmark, one after another (the ledger's, the seal's, HTTP's, prompt
advice's, outgoing webhooks', then the export's); each takes the options it knows (`--repeat`,
`--duration-s`, `--fast`, ...) and leaves the others' alone."""

from __future__ import annotations

import sys

from bench.advice.run import main as advice_main
from bench.export.run import main as export_main
from bench.http.run import main as http_main
from bench.ledger.run import main as ledger_main
from bench.seal.run import main as seal_main
from bench.webhooks.run import main as webhooks_main

BENCHMARKS = {
    "ledger": ledger_main,
    "seal": seal_main,
    "http": http_main,
    "advice": advice_main,
    "webhooks": webhooks_main,
    "export": export_main,
}


def main(argv: list[str]) -> int:
    status = 0
    for run in BENCHMARKS.values():
        status = max(status, run(argv))
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
