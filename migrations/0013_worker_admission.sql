-- Admission control and the worker's retry budget (issue 18).

-- When the worker first failed to answer for this job, since its last answered call: the dispatcher
-- retries until WORKER_RETRY_BUDGET_S after it, so a worker restart does not fail generations.
ALTER TABLE generation_jobs ADD COLUMN unavailable_since timestamptz;

-- The jobs that ended recently (admission control measures the workers' throughput over a window).
CREATE INDEX generation_jobs_ended ON generation_jobs (updated_at) WHERE done;

-- Open holds: counted for /metrics and admission, and the sweeper's expiry scan.
CREATE INDEX ledger_holds_open ON ledger_holds (expires_at) WHERE status = 'open';
