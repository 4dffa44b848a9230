-- The ledger read in commit order (ledger/feed.py): every stream reader (the feed, exports, the seal,
-- outgoing webhooks) pages by (written_by_xid, id), only below the snapshot's xmin. Without this index
-- each page would sort the whole table.
CREATE INDEX ledger_transactions_commit_order ON ledger_transactions (written_by_xid, id);
