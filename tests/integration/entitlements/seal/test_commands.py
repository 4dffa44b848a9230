"""`moments seal-key` and `moments verify`, run as the operator runs them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import asyncpg

import ledger as L
from entitlements import seal
from entitlements.seal.offline import key_id, load_public_key
from tests.support.seal import activity, seal_everything, seal_settings


def moments(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "entitlements.cli", *map(str, args)]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SEAL_")} | (env or {})
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120, check=False)


def test_seal_key_writes_a_private_file_prints_the_public_key_and_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "keys" / "seal.pem"
    made = moments("seal-key", "--out", out)
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    public = load_public_key(made.stdout.encode())
    key = seal.load_signing_key(seal_settings(key_file=out))
    assert key_id(public) == key.key_id
    assert key.key_id in made.stderr
    assert "PRIVATE" not in made.stdout

    again = moments("seal-key", "--out", out)
    assert again.returncode == 1
    assert "never overwritten" in again.stderr
    assert seal.load_signing_key(seal_settings(key_file=out)).key_id == key.key_id
    nowhere = moments("seal-key")
    assert nowhere.returncode == 1
    assert "--out" in nowhere.stderr
    from_setting = moments("seal-key", env={"SEAL_KEY_FILE": str(tmp_path / "from-setting.pem")})
    assert from_setting.returncode == 0, from_setting.stderr
    assert (tmp_path / "from-setting.pem").exists()


async def test_verify_passes_on_an_untouched_ledger_and_names_the_first_difference(
    pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    key = seal.create_key_file(tmp_path / "seal.pem")
    public = tmp_path / "seal.pub"
    public.write_text(key.public_pem)
    async with L.Ledger(pool) as led:
        await activity(led, users=2)
    await seal_everything(seal.Sealer(pool, seal_settings(checkpoint_transactions=3), key))
    environment = {"DATABASE_URL": database_url}

    good = moments("verify", "--public-key", public, env=environment)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "the seal verifies" in good.stdout
    # Without --public-key: the configured signing key's own public key.
    configured = moments("verify", env=environment | {"SEAL_KEY_FILE": str(tmp_path / "seal.pem")})
    assert configured.returncode == 0, configured.stdout + configured.stderr
    no_key = moments("verify", env=environment)
    assert no_key.returncode == 1
    assert "--public-key" in no_key.stderr

    victim = await pool.fetchval("SELECT transaction_id FROM ledger_seal_chain WHERE position = 4")
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SET LOCAL session_replication_role = replica")
        await connection.execute("UPDATE ledger_postings SET amount = amount * 3 WHERE transaction_id = $1", victim)
    bad = moments("verify", "--public-key", public, env=environment)
    assert bad.returncode == 1
    assert f"first transaction that differs: {victim} (position 4)" in bad.stdout
