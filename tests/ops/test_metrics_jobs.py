"""The daemon's job families: every job exported from the start, a removed job no longer exported."""

from __future__ import annotations

from datetime import UTC, datetime

from opskit.ops.metrics import Metrics


def test_a_job_is_exported_with_zero_counts_before_it_runs_and_not_at_all_once_a_reload_removed_it() -> None:
    metrics = Metrics()
    metrics.add_jobs([("nightly-prune", "prune"), ("hourly", "backup")])
    sample = metrics.registry.get_sample_value
    assert sample("opskit_job_runs_total", {"job_name": "nightly-prune", "action": "prune", "result": "failure"}) == 0
    assert sample("opskit_job_skipped_total", {"job_name": "nightly-prune"}) == 0

    failed_at = datetime(2026, 12, 1, 2, 30, tzinfo=UTC)
    metrics.record_job_run("nightly-prune", "prune", "failure", failed_at)
    metrics.record_job_run("nightly-prune", "prune", "aborted", datetime(2026, 12, 2, tzinfo=UTC))
    assert sample("opskit_job_runs_total", {"job_name": "nightly-prune", "action": "prune", "result": "failure"}) == 1
    # An abort (a shutdown) is neither a success nor a failure of the job.
    assert sample("opskit_job_last_failure_timestamp_seconds", {"job_name": "nightly-prune"}) == failed_at.timestamp()
    assert sample("opskit_job_last_success_timestamp_seconds", {"job_name": "nightly-prune"}) is None

    metrics.forget_jobs([("nightly-prune", "prune")])
    text = metrics.exposition().decode()
    assert 'job_name="nightly-prune"' not in text
    assert 'job_name="hourly"' in text
