import sys

from bench.export.run import main

raise SystemExit(main(sys.argv[1:]))
