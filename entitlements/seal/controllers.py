"""The seal: its status, signed checkpoints, a transaction's inclusion proof, and a bounded verification."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter

from entitlements.http import AppSettings, PageLimit, Pool
from entitlements.seal import service
from entitlements.seal.schemas import CheckpointPage, ProofOut, SealStatus, VerificationOut
from entitlements.seal.service import Signer

# Ids and numbers up to 2^53 - 1: what a JSON number holds exactly (the OpenAPI document states bounds as
# JSON numbers; a bigint's maximum would be rounded past itself).
NUMBER_MAX = (1 << 53) - 1
TransactionIdPath = Annotated[int, PathParameter(ge=1, le=NUMBER_MAX, description="A ledger transaction's id.")]
SealSigner = NamedDependency[Signer]


class SealController(Controller):
    tags = ["seal"]

    @get(
        "/v1/ledger/seal",
        operation_id="getSeal",
        summary="How far the seal has got: the sealed position, its lag, the chain's head, the last checkpoint",
        opt={"roles": ("finance",)},
    )
    async def get_seal(self, pool: Pool, settings: AppSettings, seal_signer: SealSigner) -> SealStatus:
        return await service.status(pool, settings.seal, seal_signer)

    @get(
        "/v1/ledger/checkpoints",
        operation_id="listCheckpoints",
        summary="Signed checkpoints of the seal, oldest first",
        opt={"roles": ("finance",)},
    )
    async def list_checkpoints(
        self,
        pool: Pool,
        page_limit: PageLimit,
        after: Annotated[
            int, QueryParameter(ge=0, le=NUMBER_MAX, description="List checkpoints after this number (`next`).")
        ] = 0,
    ) -> CheckpointPage:
        return await service.checkpoints(pool, after=after, limit=page_limit)

    @get(
        "/v1/ledger/transactions/{transaction_id:int}/proof",
        operation_id="getTransactionProof",
        summary="A transaction's Merkle path to the signed checkpoint that covers it (409 until it is in one)",
        opt={"roles": ("support", "finance")},
    )
    async def get_proof(self, pool: Pool, transaction_id: TransactionIdPath) -> ProofOut:
        return await service.proof(pool, transaction_id)

    @get(
        "/v1/ledger/verify",
        operation_id="verifySeal",
        summary="Verify a bounded part of the seal against the ledger (`moments verify` does all of it)",
        description="Recomputes the hashes and Merkle roots of whole checkpoints, about SEAL_VERIFY_TRANSACTIONS_MAX "
        "transactions from `checkpoint` (default: the most recent ones), and the chained tail after the last "
        "checkpoint when the window reaches it; checks their signatures; names the first difference. "
        "`next_checkpoint` continues where it stopped.",
        opt={"roles": ("finance",)},
    )
    async def verify_seal(
        self,
        pool: Pool,
        settings: AppSettings,
        seal_signer: SealSigner,
        checkpoint: Annotated[
            int | None, QueryParameter(ge=1, le=NUMBER_MAX, description="The first checkpoint to verify.")
        ] = None,
    ) -> VerificationOut:
        return await service.verify_window(pool, settings.seal, seal_signer, checkpoint=checkpoint)
