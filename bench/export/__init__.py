"""The export benchmark: rows per second and peak memory of a ledger export, against PostgreSQL's own COPY."""
