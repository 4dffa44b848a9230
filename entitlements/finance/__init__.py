"""Finance: the ledger in commit order, exports with manifests, balances at a moment, the roll-forward of
the moments liability and period close, and the price what-if."""

from entitlements.finance.exports import (
    FORMAT_VERSION,
    MEDIA_TYPES,
    ExportRequest,
    ExportRunner,
    create_export,
    export_file,
    export_to_file,
    get_export,
    list_exports,
    request_of,
    write_export,
)
from entitlements.finance.schemas import ExportCreate, Manifest, Rollforward
from entitlements.finance.seal_head import seal_head
from entitlements.finance.service import (
    build_rollforward,
    close_period,
    list_periods,
    rollforward,
    rollforward_csv,
)

__all__ = [
    "FORMAT_VERSION",
    "MEDIA_TYPES",
    "ExportCreate",
    "ExportRequest",
    "ExportRunner",
    "Manifest",
    "Rollforward",
    "build_rollforward",
    "close_period",
    "create_export",
    "export_file",
    "export_to_file",
    "get_export",
    "list_exports",
    "list_periods",
    "request_of",
    "rollforward",
    "rollforward_csv",
    "seal_head",
    "write_export",
]
