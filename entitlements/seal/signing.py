"""The seal's signing key: an Ed25519 private key kept outside the database (a file, or the environment).

Only the public key and its id ever reach the database or a response; the private key is never logged
(`SigningKey`'s repr leaves it out).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from entitlements.seal.offline import key_id, public_pem
from entitlements.settings import SealSettings

# Only the owner may read the key file `moments seal-key` writes.
KEY_FILE_MODE = 0o600


class SealKeyProblem(Exception):
    """No usable signing key: said in one line (to the log, /v1/ledger/seal and /readyz)."""


@dataclass(frozen=True)
class SigningKey:
    private_key: Ed25519PrivateKey = field(repr=False)
    key_id: str
    public_pem: str

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()


def _signing_key(private_key: Ed25519PrivateKey) -> SigningKey:
    public = private_key.public_key()
    return SigningKey(private_key=private_key, key_id=key_id(public), public_pem=public_pem(public))


def _from_pem(data: bytes, where: str) -> SigningKey:
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise SealKeyProblem(f"{where} is not an unencrypted PEM private key ({error})") from None
    if not isinstance(private_key, Ed25519PrivateKey):
        raise SealKeyProblem(f"{where} is not an Ed25519 key")
    return _signing_key(private_key)


def load_signing_key(settings: SealSettings) -> SigningKey:
    """The configured key, or `SealKeyProblem` saying why there is none."""
    if settings.key_pem is not None:
        return _from_pem(settings.key_pem.encode(), "SEAL_PRIVATE_KEY")
    if settings.key_file is None:
        raise SealKeyProblem(
            "no signing key: set SEAL_KEY_FILE (create one with `moments seal-key --out FILE`) or SEAL_PRIVATE_KEY"
        )
    try:
        data = settings.key_file.read_bytes()
    except OSError as error:
        raise SealKeyProblem(f"SEAL_KEY_FILE {settings.key_file} cannot be read ({error.strerror})") from None
    return _from_pem(data, f"SEAL_KEY_FILE {settings.key_file}")


def create_key_file(path: Path) -> SigningKey:
    """A new key in a new file readable by its owner only; an existing file is never overwritten (it may
    be the key every published checkpoint was signed with)."""
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem)
    return _signing_key(private_key)
