"""docs/finance.md's procedure, run as written with curl, jq and sha256sum against a real `moments serve`:
export last month, check the manifest's SHA-256, reproduce the roll-forward's closing figure."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from entitlements.keys import create_key
from tests.support.finance import a_user, backdated_purchase
from tests.support.processes import ROOT, api_process

DOC = ROOT / "docs" / "finance.md"
PROCEDURE = re.compile(r"<!-- procedure:start -->(.*?)<!-- procedure:end -->", re.S)
SHELL_BLOCK = re.compile(r"```sh\n(.*?)```", re.S)
PROCEDURE_S_MAX = 120

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("bash", "curl", "jq", "sha256sum")), reason="needs curl, jq, sha256sum"
)


def procedure() -> str:
    found = PROCEDURE.search(DOC.read_text())
    assert found, "docs/finance.md has lost its procedure markers"
    return "\n".join(SHELL_BLOCK.findall(found.group(1)))


def month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def test_the_documented_procedure_reproduces_last_months_closing_liability(
    pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    this_month = month_start(datetime.now(UTC))
    last_month = month_start(this_month - timedelta(days=1))
    before = month_start(last_month - timedelta(days=1))
    for user_id in ("alice", "b,ob"):
        await a_user(pool, user_id)
    await backdated_purchase(pool, "alice", 500, before + timedelta(days=3), "before")
    await backdated_purchase(pool, "alice", 70, last_month, "first-instant")
    await backdated_purchase(pool, "b,ob", 30, last_month + timedelta(days=9), "middle")
    await backdated_purchase(pool, "b,ob", 11, this_month - timedelta(microseconds=1), "last-instant")
    await backdated_purchase(pool, "alice", 999, this_month, "not-last-month")
    key = (await create_key(pool, role="finance", name="docs reader")).key

    with api_process(database_url, log_dir=tmp_path, dispatcher=False) as api:
        work = tmp_path / "work"
        work.mkdir()
        ran = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", procedure()],
            cwd=work,
            env=os.environ | {"MOMENTS_URL": api.base_url, "MOMENTS_KEY": key},
            capture_output=True,
            text=True,
            timeout=PROCEDURE_S_MAX,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr + api.log_tail()
    assert "postings.ndjson: OK" in ran.stdout
    assert "everything.ndjson: OK" in ran.stdout
    assert "opening 500 + change 111 = 611; the roll-forward's closing: 611" in ran.stdout
    lines = (work / "postings.ndjson").read_text().splitlines()
    assert len(lines) == 6

    # `moments export` writes the same bytes from the same ledger.
    manifest_path, body_path = tmp_path / "manifest.json", tmp_path / "cli.ndjson"
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "entitlements.cli",
            "export",
            "--dataset",
            "postings",
            "--format",
            "ndjson",
            "--since",
            last_month.isoformat(),
            "--until",
            this_month.isoformat(),
            "--output",
            str(body_path),
            "--manifest",
            str(manifest_path),
        ],
        cwd=ROOT,
        env=os.environ | {"DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=PROCEDURE_S_MAX,
    )
    assert cli.returncode == 0, cli.stderr
    api_manifest = json.loads((work / "export.json").read_text())["manifest"]  # step 4's, everything before
    first_manifest = json.loads((work / "created.json").read_text())
    assert first_manifest["status"] in {"pending", "running", "done"}
    assert body_path.read_bytes() == (work / "postings.ndjson").read_bytes()
    assert json.loads(manifest_path.read_text())["rows"] == 6
    assert api_manifest["rows"] == len((work / "everything.ndjson").read_text().splitlines())


async def test_moments_export_to_stdout_with_the_manifest_on_stderr(pool: asyncpg.Pool, database_url: str) -> None:
    await a_user(pool, "alice")
    cli = subprocess.run(
        [sys.executable, "-m", "entitlements.cli", "export", "--dataset", "transactions", "--format", "csv"],
        cwd=ROOT,
        env=os.environ | {"DATABASE_URL": database_url},
        capture_output=True,
        timeout=PROCEDURE_S_MAX,
    )
    assert cli.returncode == 0, cli.stderr
    manifest = json.loads(cli.stderr)
    import hashlib

    assert manifest["sha256"] == hashlib.sha256(cli.stdout).hexdigest()
    assert manifest["rows"] == 1
    assert cli.stdout.startswith(b"transaction_id,kind,idempotency_key,user_id,")
    bad = subprocess.run(
        [sys.executable, "-m", "entitlements.cli", "export", "--after", "forged"],
        cwd=ROOT,
        env=os.environ | {"DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=PROCEDURE_S_MAX,
    )
    assert bad.returncode == 1
    assert "after" in bad.stderr
