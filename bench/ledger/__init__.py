"""The ledger benchmark: hold-then-capture lifecycles per second against PostgreSQL's own ceiling."""
