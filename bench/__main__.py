"""`python -m bench`: every benchmark, one after another (the ledger's, then prompt advice's).

Options go to each benchmark that knows them (`--repeat`, `--fast` and `--strict` to both); an option
no benchmark knows is an error. `--only-benchmark NAME` (repeatable) runs just those; each also runs
alone as `python -m bench.ledger` or `python -m bench.advice`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from bench.advice import run as advice
from bench.ledger import run as ledger

BENCHMARKS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {
    "ledger": (ledger.parser, ledger.run_parsed),
    "advice": (advice.parser, advice.run_parsed),
}


def main(argv: list[str]) -> int:
    chooser = argparse.ArgumentParser(prog="python -m bench", add_help=False)
    chooser.add_argument("--only-benchmark", choices=list(BENCHMARKS), action="append")
    chosen, rest = chooser.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        print(__doc__)
        for name, (parser, _) in BENCHMARKS.items():
            print(f"\n--- {name} ---")
            parser().print_help()
        return 0
    names = chosen.only_benchmark or list(BENCHMARKS)
    parsed = {}
    unknown: set[str] | None = None
    for name in names:
        options, leftover = BENCHMARKS[name][0]().parse_known_args(rest)
        parsed[name] = options
        unknown = set(leftover) if unknown is None else unknown & set(leftover)
    if unknown:
        print(f"python -m bench: no benchmark takes {' '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    status = 0
    for name in names:
        status = max(status, BENCHMARKS[name][1](parsed[name]))
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
