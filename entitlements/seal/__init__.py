"""The ledger's seal (docs/seal.md): a hash chain over ledger transactions in commit order, signed
checkpoints with Merkle roots, inclusion proofs and verification.

offline.py (the format and the offline verifier: standard library and `cryptography` only), signing.py
(the key, outside the database), sealer.py (the background task), verify.py (verification against the
database), records.py (rows as the format's values), service.py (use cases), queries.py (every SQL
statement), schemas.py (responses), controllers.py (routes).
"""

from entitlements.seal.offline import FormatError
from entitlements.seal.sealer import Round, Sealer
from entitlements.seal.service import (
    Signer,
    public_keys_from_files,
    refresh_metrics,
    seal_head,
    signer_for,
    status,
    verify_window,
)
from entitlements.seal.signing import SealKeyProblem, SigningKey, create_key_file, load_signing_key
from entitlements.seal.verify import Difference, Verification, verify

__all__ = [
    "Difference",
    "FormatError",
    "Round",
    "SealKeyProblem",
    "Sealer",
    "Signer",
    "SigningKey",
    "Verification",
    "create_key_file",
    "load_signing_key",
    "public_keys_from_files",
    "refresh_metrics",
    "seal_head",
    "signer_for",
    "status",
    "verify",
    "verify_window",
]
