"""The offline procedure (docs/seal.md): entitlements/seal/offline.py, copied out of the project and run
alone, verifies an NDJSON transactions export and an inclusion proof with only the public key, and
refuses a changed one."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import msgspec
import pytest

import ledger as L
from entitlements import seal
from entitlements.seal import offline
from entitlements.seal.service import proof
from tests.support.seal import activity, checkpoint_documents, export_lines, new_key, seal_everything, seal_settings


class Auditor:
    """A directory with nothing of the project but the verifier, the public key and what finance handed over."""

    def __init__(self, directory: Path, key: seal.SigningKey) -> None:
        self.directory = directory
        directory.mkdir()
        self.script = directory / "verify_offline.py"
        shutil.copy(offline.__file__, self.script)
        self.public_key = directory / "seal.pub"
        self.public_key.write_text(key.public_pem)

    def write(self, name: str, text: str) -> Path:
        path = self.directory / name
        path.write_text(text)
        return path

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        # -I: isolated (no current directory or PYTHONPATH on sys.path); run from the auditor's directory.
        return subprocess.run(
            [sys.executable, "-I", str(self.script), *map(str, args), "--public-key", str(self.public_key)],
            capture_output=True,
            text=True,
            cwd=self.directory,
            timeout=60,
            check=False,
        )


@pytest.fixture
async def sealed(pool: asyncpg.Pool, tmp_path: Path) -> tuple[Auditor, list[str]]:
    key = new_key(tmp_path)
    async with L.Ledger(pool) as led:
        await activity(led, users=3)
    sealer = seal.Sealer(pool, seal_settings(checkpoint_transactions=4, checkpoint_interval_s=0.05), key)
    await seal_everything(sealer)
    # The last three transactions wait for the interval before their checkpoint.
    await asyncio.sleep(0.1)
    assert (await sealer.seal_once()).checkpoint == 4
    auditor = Auditor(tmp_path / "auditor", key)
    auditor.write("checkpoints.json", json.dumps({"items": await checkpoint_documents(pool), "next": None}))
    return auditor, await export_lines(pool)


async def test_an_export_verifies_offline_with_only_the_public_key(
    sealed: tuple[Auditor, list[str]], pool: asyncpg.Pool
) -> None:
    auditor, lines = sealed
    export = auditor.write("transactions.ndjson", "\n".join(lines) + "\n")
    head = await seal.seal_head(pool)
    assert head is not None
    done = auditor.run("export", export, "--checkpoints", "checkpoints.json", "--seal-head", head)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"verified: {len(lines)} transaction(s)" in done.stdout


async def test_a_changed_export_fails_offline(sealed: tuple[Auditor, list[str]]) -> None:
    auditor, lines = sealed
    rows = [json.loads(line) for line in lines]
    rows[5]["postings"][0]["amount"] += 1
    changed = auditor.write("changed.ndjson", "\n".join(json.dumps(row) for row in rows))
    done = auditor.run("export", changed, "--checkpoints", "checkpoints.json")
    assert done.returncode == 1
    assert "FAILED: checkpoint 2" in done.stdout
    dropped = auditor.write("dropped.ndjson", "\n".join(lines[:6] + lines[7:]))
    done = auditor.run("export", dropped, "--checkpoints", "checkpoints.json")
    assert done.returncode == 1
    assert "FAILED: checkpoint 2" in done.stdout
    assert "was removed" in done.stdout


async def test_a_proof_verifies_offline_and_a_changed_one_does_not(
    sealed: tuple[Auditor, list[str]], pool: asyncpg.Pool
) -> None:
    auditor, lines = sealed
    transaction_id = json.loads(lines[6])["transaction_id"]
    document = msgspec.to_builtins(await proof(pool, transaction_id))
    good = auditor.write("proof.json", json.dumps(document))
    done = auditor.run("proof", good)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"transaction {transaction_id} is in checkpoint 2" in done.stdout

    document["transaction"]["reason"] = "something else"
    done = auditor.run("proof", auditor.write("changed.json", json.dumps(document)))
    assert done.returncode == 1
    assert f"FAILED: transaction {transaction_id}" in done.stdout


async def test_a_proof_against_another_key_fails_offline(
    sealed: tuple[Auditor, list[str]], pool: asyncpg.Pool, tmp_path: Path
) -> None:
    auditor, lines = sealed
    document = msgspec.to_builtins(await proof(pool, json.loads(lines[0])["transaction_id"]))
    auditor.public_key.write_text(new_key(tmp_path, "other.pem").public_pem)
    done = auditor.run("proof", auditor.write("proof.json", json.dumps(document)))
    assert done.returncode == 1
    assert "not among the keys given" in done.stdout


def test_the_offline_verifier_imports_only_the_standard_library_and_cryptography() -> None:
    import ast

    tree = ast.parse(Path(offline.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    outside = {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names | {"cryptography"}}
    assert not outside
