"""`python -m bench.advice`: the prompt-advice benchmark alone."""

from __future__ import annotations

import sys

from bench.advice.run import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
