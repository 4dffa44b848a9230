"""`moments dev` keeps one database port and URL in .data/, and the CLI finds them there."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from entitlements.dev import service


@pytest.fixture
def in_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    (tmp_path / ".data").mkdir()
    return tmp_path


def test_the_database_port_is_chosen_once_and_kept(in_folder: Path) -> None:
    first = service._database_port()
    assert (in_folder / ".data" / "database-port").read_text().strip() == str(first)
    assert service._database_port() == first


def test_a_kept_port_taken_by_another_program_is_replaced_and_kept(in_folder: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        (in_folder / ".data" / "database-port").write_text(f"{taken}\n")
        chosen = service._database_port()
        assert chosen != taken
        assert (in_folder / ".data" / "database-port").read_text().strip() == str(chosen)


def test_the_url_comes_from_the_environment_first_then_from_data(
    in_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(service.DatabaseNotFound):
        service.database_url()
    (in_folder / ".data" / "database-url").write_text("postgresql://postgres@127.0.0.1:1/postgres\n")
    assert service.database_url() == "postgresql://postgres@127.0.0.1:1/postgres"
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/db")
    assert service.database_url() == "postgresql://elsewhere/db"


def test_the_development_seal_key_is_made_once_and_kept(in_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SEAL_KEY_FILE", "SEAL_PRIVATE_KEY"):
        # Set, then removed: monkeypatch then puts back what was there before (ensure_dev_seal_key sets it).
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    first = service.ensure_dev_seal_key()
    assert first == ".data/seal-key.pem"
    made = (in_folder / first).read_bytes()
    assert service.ensure_dev_seal_key() == first
    assert (in_folder / first).read_bytes() == made
    monkeypatch.setenv("SEAL_KEY_FILE", str(in_folder / "elsewhere.pem"))
    assert service.ensure_dev_seal_key() == str(in_folder / "elsewhere.pem")
    assert (in_folder / "elsewhere.pem").exists()
