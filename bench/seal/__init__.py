"""The seal benchmark: the sealer's rate against the ledger's peak write rate, its lag while the ledger
is written at that rate, and what `moments verify` costs per million transactions."""
