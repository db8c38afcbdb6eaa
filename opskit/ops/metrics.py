"""Prometheus metrics, shared by ``opskit daemon`` (/metrics) and ``opskit metrics --textfile``.

Names follow docs/operations.md §5: timestamps rather than ages (Prometheus
computes ``time() - x``), no backup ids in labels. Every value except the run counters is
computed from what is stored (manifests, drill reports), so a freshly started daemon or a
one-shot ``opskit metrics`` run tells the truth; the daemon recomputes a target's values
after each of its runs.

Where a stored fact comes from:

- backup gauges: the newest complete backup (manifest) in the target's primary storage;
  ``phase="total"`` is finished - started, other phases come from ``manifest.extra["phases"]``
  (``{name: seconds}``) when the backup recorded them;
- ``opskit_backup_copy_last_success_timestamp_seconds``: per secondary storage, when the
  newest manifest there was written (the storage's mtime: a copy commits by writing it);
- ``opskit_backups_retained``: complete backups per storage;
- ``opskit_backups_future_dated``: backups per storage whose snapshot time is beyond
  ``timeline.CLOCK_SKEW`` ahead of the clock (a host with a wrong clock); they are never
  "the newest", so ``time() - opskit_backup_last_recovery_point_timestamp_seconds`` stays
  true (alert on ``opskit_backups_future_dated > 0``);
- drill gauges: the newest drill report in any of the target's storages, as the catalog
  reads it (``catalog.DrillRecord``);
- ``opskit_storage_up``: 1 when the storage could be listed, 0 otherwise;
- WAL (:class:`WalCollector`, computed at scrape time): ``opskit_wal_spool_bytes`` and
  ``opskit_wal_spool_limit_bytes`` (the streamer's local spool and ``wal.max_spool``),
  ``opskit_wal_ship_failures_total`` and ``opskit_wal_stream_storage_up`` (only where the
  streamer runs: the daemon running a ``wal-stream`` job), ``opskit_wal_slot_lag_bytes``
  (``pg_current_wal_lsn()`` - the slot's ``restart_lsn``) and ``opskit_wal_archive_lag_bytes``
  (``pg_current_wal_lsn()`` - the end of the newest archived segment), see ``opskit.wal.lag``.
  A running streamer's own figures (updated every poll) win over those of the last refresh;
  a refresh reads the spool from disk when it is local and the lags from the target's server
  (one query, only for a target with a ``[wal]`` section or archived WAL). A streamer running in
  this process also moves ``opskit_wal_last_archived_timestamp_seconds`` to its newest stored
  segment at each scrape.
- job families (only the daemon exports them; ``opskit metrics --textfile`` has no jobs), labelled
  ``job_name``, not ``job``, which Prometheus sets to the scrape job (an exported ``job`` label
  would become ``exported_job``): ``opskit_job_runs_total{job_name,action,result}`` counts this
  process's runs of every job (success, failure, aborted, timed_out), ``opskit_job_skipped_total``
  the slots it skipped because the job was still running, and
  ``opskit_job_last_success_timestamp_seconds`` / ``opskit_job_last_failure_timestamp_seconds``
  (failure: failed or timed out) come from the ledger at start (every replica's runs) and move
  with this process's runs.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
    write_to_textfile,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from opskit import __version__
from opskit.backup import server as server_backup
from opskit.catalog import (
    DrillRecord,
    Manifest,
    list_drills,
    list_manifest_keys,
    manifest_key,
    read_manifest,
)
from opskit.catalog.runs import count_runs
from opskit.core.errors import BackupFailed, ConfigError, ManifestError, ObjectNotFound, OpskitError
from opskit.core.log import get_logger
from opskit.plan import timeline
from opskit.storage.base import Storage
from opskit.wal import lag, stream
from opskit.wal.archive import newest_archived

if TYPE_CHECKING:
    from opskit.context import AppContext

log = get_logger(__name__)

# docs/operations.md §5 names exactly what is exported; a counter's *_created series (the process start
# time, in the text format) is noise next to timestamps that come from the catalog.
disable_created_metrics()

RUN_RESULTS = ("success", "failure", "aborted")
# A job run's result in the metrics: the backup counter's words, plus a run its job timeout cancelled.
JOB_RESULTS = (*RUN_RESULTS, "timed_out")


class Metrics:
    """The opskit metric family, in a registry of its own (no process/platform collectors)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        # Manifests never change once written, so each is read once per process, not per refresh:
        # a year of hourly backups would otherwise be 8,760 GETs after every run.
        self._manifests: dict[tuple[str, str, str], Manifest] = {}
        r = self.registry
        self.backup_last_success = Gauge(
            "opskit_backup_last_success_timestamp_seconds",
            "When the newest complete backup finished (Unix time).",
            ["target"],
            registry=r,
        )
        self.backup_last_recovery_point = Gauge(
            "opskit_backup_last_recovery_point_timestamp_seconds",
            "Snapshot time of the newest complete backup: the point a restore returns to (Unix time).",
            ["target"],
            registry=r,
        )
        self.backup_last_duration = Gauge(
            "opskit_backup_last_duration_seconds",
            "Wall time of the newest complete backup, in total and per recorded phase.",
            ["target", "phase"],
            registry=r,
        )
        self.backup_last_size = Gauge(
            "opskit_backup_last_size_bytes",
            "Stored size of the newest complete backup.",
            ["target"],
            registry=r,
        )
        self.backup_runs = Counter(
            "opskit_backup_runs_total",
            "Backup runs by this process, by result (success, failure, aborted).",
            ["target", "result"],
            registry=r,
        )
        self.copy_last_success = Gauge(
            "opskit_backup_copy_last_success_timestamp_seconds",
            "When the newest backup copy was committed to a secondary storage (Unix time).",
            ["target", "storage"],
            registry=r,
        )
        self.backups_retained = Gauge(
            "opskit_backups_retained",
            "Complete backups kept in a storage.",
            ["target", "storage"],
            registry=r,
        )
        self.backups_future_dated = Gauge(
            "opskit_backups_future_dated",
            "Backups in a storage dated beyond the clock skew allowance in the future (a wrong host clock).",
            ["target", "storage"],
            registry=r,
        )
        self.drill_last_success = Gauge(
            "opskit_drill_last_success_timestamp_seconds",
            "When the newest passing restore drill finished (Unix time).",
            ["target"],
            registry=r,
        )
        self.drill_last_result = Gauge(
            "opskit_drill_last_result",
            "Verdict of the newest restore drill: 1 passed, 0 failed.",
            ["target"],
            registry=r,
        )
        self.drill_estimated_rto = Gauge(
            "opskit_drill_estimated_rto_seconds",
            "Estimated RTO of the newest drill: measured restore time plus configured allowances "
            "(absent when that drill's restore did not finish: it measured no RTO).",
            ["target"],
            registry=r,
        )
        self.drill_data_loss = Gauge(
            "opskit_drill_data_loss_seconds",
            "Data-loss window measured by the newest drill (drill start - recovery point).",
            ["target"],
            registry=r,
        )
        self.rpo_target = Gauge("opskit_rpo_target_seconds", "Configured RPO objective.", ["target"], registry=r)
        self.rto_target = Gauge("opskit_rto_target_seconds", "Configured RTO objective.", ["target"], registry=r)
        self.storage_up = Gauge(
            "opskit_storage_up",
            "1 when the storage could be listed at the last refresh.",
            ["storage"],
            registry=r,
        )
        self.wal_last_archived = Gauge(
            "opskit_wal_last_archived_timestamp_seconds",
            "When the newest archived WAL segment reached the primary storage (absent without WAL archiving); "
            "time() minus it is the point-in-time recovery RPO.",
            ["target"],
            registry=r,
        )
        self.job_runs = Counter(
            "opskit_job_runs_total",
            "Job runs by this process, by job, action and result (success, failure, aborted, timed_out).",
            ["job_name", "action", "result"],
            registry=r,
        )
        self.job_skipped = Counter(
            "opskit_job_skipped_total",
            "Scheduled slots this process did not run because the job was still running an earlier slot.",
            ["job_name"],
            registry=r,
        )
        self.job_last_success = Gauge(
            "opskit_job_last_success_timestamp_seconds",
            "When the job's newest successful run finished (Unix time; from the ledger at start).",
            ["job_name"],
            registry=r,
        )
        self.job_last_failure = Gauge(
            "opskit_job_last_failure_timestamp_seconds",
            "When the job's newest failed or timed-out run finished (Unix time; from the ledger at start).",
            ["job_name"],
            registry=r,
        )
        self.wal = WalCollector()
        r.register(self.wal)
        self.build_info = Gauge("opskit_build_info", "opskit version running.", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)

    # ------------------------------------------------------------------ updates

    def record_run(self, target: str, result: str) -> None:
        """Count one backup run of ``target`` ending in ``result`` (success, failure or aborted)."""
        self.backup_runs.labels(target=target, result=result).inc()

    def add_jobs(self, jobs: Iterable[tuple[str, str]]) -> None:
        """Export zero run and skip counts for every (job, action), so ``increase()`` sees a job's first run."""
        with self._lock:
            for job, action in jobs:
                for result in JOB_RESULTS:
                    self.job_runs.labels(job_name=job, action=action, result=result)
                self.job_skipped.labels(job_name=job)

    def forget_jobs(self, jobs: Iterable[tuple[str, str]]) -> None:
        """Stop exporting every series of these (job, action) pairs (jobs a reload removed)."""
        with self._lock:
            for job, action in jobs:
                for result in JOB_RESULTS:
                    _remove(self.job_runs, job, action, result)
                for family in (self.job_skipped, self.job_last_success, self.job_last_failure):
                    _remove(family, job)

    def record_job_run(self, job: str, action: str, result: str, finished: datetime) -> None:
        """Count one run of ``job`` ending in ``result`` (one of JOB_RESULTS) and move its last-success/failure time."""
        with self._lock:
            self.job_runs.labels(job_name=job, action=action, result=result).inc()
            if result == "success":
                self.job_last_success.labels(job_name=job).set(finished.timestamp())
            elif result in ("failure", "timed_out"):
                self.job_last_failure.labels(job_name=job).set(finished.timestamp())

    def record_job_skip(self, job: str) -> None:
        """Count one slot of ``job`` skipped because the job was still running."""
        with self._lock:
            self.job_skipped.labels(job_name=job).inc()

    def set_job_results(self, results: Mapping[str, tuple[datetime | None, datetime | None]]) -> None:
        """Set each job's last success and last failure times from ``{job: (success, failure)}`` (the ledger)."""
        with self._lock:
            for job, (success, failure) in results.items():
                if success is not None:
                    self.job_last_success.labels(job_name=job).set(success.timestamp())
                if failure is not None:
                    self.job_last_failure.labels(job_name=job).set(failure.timestamp())

    def count_stored_runs(self, ctx: AppContext, targets: Iterable[str] | None = None) -> None:
        """Add the backup runs recorded in each target's primary storage (``catalog.runs``) to the run counter.

        For ``opskit metrics`` (a fresh registry per call): its counter then says how many backup
        runs the repository has seen, from cron, a CronJob or the daemon alike, so
        ``increase(opskit_backup_runs_total{result="failure"}[1h])`` rises after a failed CronJob
        run. Never raises: an unlistable storage is a warning and leaves that target's counts at 0.
        """
        names = _metric_targets(ctx, targets)
        with self._lock:
            for name in names:
                storage_name = ctx.config.target(name).primary_storage
                try:
                    counts = count_runs(ctx.storage(storage_name), name, "backup")
                except OpskitError as exc:
                    log.warning("metrics: run records unreadable", storage=storage_name, target=name, error=exc.message)
                    continue
                for result in RUN_RESULTS:
                    self.backup_runs.labels(target=name, result=result).inc(counts.get(result, 0))

    def refresh(self, ctx: AppContext, targets: Iterable[str] | None = None) -> None:
        """Recompute every catalog-derived value of ``targets`` (default: all) from storage.

        Never raises for storage problems: an unreachable storage sets ``opskit_storage_up`` 0
        and leaves that storage's values as they were.
        """
        names = _metric_targets(ctx, targets)
        with self._lock:
            for name in names:
                self._refresh_target(ctx, name)

    def _refresh_target(self, ctx: AppContext, name: str) -> None:
        target = ctx.config.target(name)
        self.rpo_target.labels(target=name).set(ctx.config.objectives.rpo.total_seconds())
        self.rto_target.labels(target=name).set(ctx.config.objectives.rto.total_seconds())
        for result in RUN_RESULTS:
            self.backup_runs.labels(target=name, result=result)  # export zeros so rate() works at once
        drills: list[DrillRecord] = []
        now = ctx.clock()
        for index, storage_name in enumerate(target.storages):
            try:
                storage = ctx.storage(storage_name)
                every = self._backups(storage, name)
                future = timeline.future(every, now)
                backups = timeline.present(every, now)  # a future-dated backup is never "the newest"
                if index > 0:
                    copied = _manifest_mtime(storage, backups[0]) if backups else None
                drills.extend(list_drills(storage, name))
                wal = newest_archived(storage, name) if index == 0 else None
            except OpskitError as exc:
                log.warning("metrics: storage unreadable", storage=storage_name, target=name, error=exc.message)
                self.storage_up.labels(storage=storage_name).set(0)
                continue
            self.storage_up.labels(storage=storage_name).set(1)
            self.backups_retained.labels(target=name, storage=storage_name).set(len(every))
            self.backups_future_dated.labels(target=name, storage=storage_name).set(len(future))
            if index == 0:
                self._set_backup(name, backups[0] if backups else None)
                if wal is not None:
                    self.wal_last_archived.labels(target=name).set(wal[1].timestamp())
            elif copied is not None:
                self.copy_last_success.labels(target=name, storage=storage_name).set(copied.timestamp())
            if index == 0:
                self.wal.refreshed[name] = wal_view(ctx, name, wal[0] if wal is not None else None)
        self._set_drills(name, drills)

    def _backups(self, storage: Storage, target: str) -> list[Manifest]:
        """Return the complete backups of ``target`` in ``storage``, newest first, reading new manifests only."""
        found: list[Manifest] = []
        for _, backup_id in list_manifest_keys(storage, target):
            cache_key = (storage.name, target, backup_id)
            manifest = self._manifests.get(cache_key)
            if manifest is None:
                try:
                    manifest = read_manifest(storage, target, backup_id)
                except ObjectNotFound:
                    continue  # deleted between list and read
                except ManifestError as exc:
                    log.warning(
                        "metrics: unreadable manifest skipped", target=target, backup_id=backup_id, error=exc.message
                    )
                    continue
                self._manifests[cache_key] = manifest
            found.append(manifest)
        found.sort(key=lambda m: (m.snapshot_time, m.id), reverse=True)
        return found

    def _set_backup(self, target: str, newest: Manifest | None) -> None:
        if newest is None:
            for gauge in (self.backup_last_success, self.backup_last_recovery_point, self.backup_last_size):
                _remove(gauge, target)
            return
        self.backup_last_success.labels(target=target).set(newest.finished_at.timestamp())
        self.backup_last_recovery_point.labels(target=target).set(newest.snapshot_time.timestamp())
        self.backup_last_size.labels(target=target).set(newest.size)
        total = (newest.finished_at - newest.started_at).total_seconds()
        self.backup_last_duration.labels(target=target, phase="total").set(total)
        phases = newest.extra.get("phases") if isinstance(newest.extra, Mapping) else None
        if isinstance(phases, Mapping):
            for phase, seconds in phases.items():
                if isinstance(seconds, int | float) and not isinstance(seconds, bool):
                    self.backup_last_duration.labels(target=target, phase=str(phase)).set(seconds)

    def _set_drills(self, target: str, drills: list[DrillRecord]) -> None:
        if not drills:
            return
        drills.sort(key=lambda d: d.sort_key)
        newest = drills[-1]
        self.drill_last_result.labels(target=target).set(1 if newest.passed else 0)
        passed = [d for d in drills if d.passed]
        if passed:
            self.drill_last_success.labels(target=target).set(passed[-1].finished.timestamp())
        if newest.estimated_rto_seconds is not None:
            self.drill_estimated_rto.labels(target=target).set(newest.estimated_rto_seconds)
        else:
            # A drill that restored nothing measured no RTO: an older drill's figure must not stand
            # in for it (the daemon's registry would otherwise keep exporting it).
            _remove(self.drill_estimated_rto, target)
        if newest.data_loss_seconds is not None:
            self.drill_data_loss.labels(target=target).set(newest.data_loss_seconds)

    # ------------------------------------------------------------------ output

    def exposition(self) -> bytes:
        """Return the metrics in the Prometheus text format."""
        with self._lock:
            self._apply_streamers()
            return generate_latest(self.registry)

    def _apply_streamers(self) -> None:
        """Move ``opskit_wal_last_archived_timestamp_seconds`` to what a streamer in this process stored last.

        The daemon refreshes a target after each of its runs, and a ``wal-stream`` run does not
        end: without this the RPO would look as old as the target's last other job.
        """
        for state in stream.live_states():
            if state.newest_shipped_at is not None:
                self.wal_last_archived.labels(target=state.target).set(state.newest_shipped_at)

    def write_textfile(self, path: Path) -> None:
        """Write the metrics for node_exporter's textfile collector, atomically (temp file + rename).

        Raises ConfigError (exit 2) when ``path`` cannot be written there (no such directory,
        not a directory, permission denied: the option is wrong), BackupFailed (exit 4) when the
        write itself failed (a full disk).
        """
        try:
            with self._lock:
                self._apply_streamers()
                write_to_textfile(str(path), self.registry)
        except OSError as exc:
            error = BackupFailed if exc.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT) else ConfigError
            raise error(
                f"cannot write metrics to {path}: {exc.strerror or exc}",
                hint="point --textfile at node_exporter's --collector.textfile.directory, writable by opskit",
            ) from exc


@dataclass
class WalView:
    """One target's WAL figures (None: not known, so not exported)."""

    spool_bytes: int | None = None
    spool_limit_bytes: int | None = None
    slot_lag_bytes: int | None = None
    archive_lag_bytes: int | None = None
    ship_failures: int | None = None
    storage_up: bool | None = None


def wal_view(ctx: AppContext, target: str, newest_segment: str | None) -> WalView:
    """Return ``target``'s WAL figures as this process can see them without a streamer: the spool and the server.

    The spool is read only when ``[wal]`` is configured and its directory exists here; the
    server is asked (:func:`opskit.wal.lag.server_lag`) only for a target with ``[wal]`` or
    archived WAL that is not another target's staging target. Never raises: an unreachable server is a warning and leaves the lags unknown.
    """
    settings = ctx.config.wal
    view = WalView()
    if settings is not None:
        # tools.state_dir itself, not ctx.state_dir: reading metrics must not create directories.
        spool = ctx.config.tools.state_dir / settings.spool_dir / target
        if spool.is_dir():
            view.spool_bytes = stream.spool_size(spool)
            view.spool_limit_bytes = settings.max_spool
    if settings is None and newest_segment is None:
        return view
    if any(other.staging == target for other in ctx.config.targets.values()):
        return view  # a staging target is restored into, never archived: its server is not asked
    try:
        found = lag.server_lag(ctx.config.target(target), settings.slot if settings else None, newest_segment)
    except OpskitError as exc:
        log.warning("metrics: WAL positions unreadable", target=target, error=exc.one_line())
        return view
    view.slot_lag_bytes = found.slot_lag_bytes
    view.archive_lag_bytes = found.archive_lag_bytes
    return view


class WalCollector:
    """Exports the WAL families at scrape time: a running streamer's live state over the last refresh's view."""

    def __init__(self) -> None:
        self.refreshed: dict[str, WalView] = {}

    def views(self) -> dict[str, WalView]:
        """Return {target: figures}, a streamer running in this process overriding what it knows."""
        views = {name: replace(view) for name, view in self.refreshed.items()}
        for state in stream.live_states():
            view = views.setdefault(state.target, WalView())
            view.spool_bytes, view.spool_limit_bytes = state.spool_bytes, state.spool_limit
            view.ship_failures, view.storage_up = state.ship_failures, state.storage_up
            if state.slot_lag_bytes is not None:
                view.slot_lag_bytes = state.slot_lag_bytes
            if state.archive_lag_bytes is not None:
                view.archive_lag_bytes = state.archive_lag_bytes
        return views

    def collect(self) -> Iterator[Metric]:
        """Yield the WAL metric families (empty ones too, so the names are always exposed)."""
        views = self.views()
        gauges = {
            "spool_bytes": GaugeMetricFamily(
                "opskit_wal_spool_bytes", "Bytes in the WAL streamer's local spool, not yet stored.", labels=["target"]
            ),
            "spool_limit_bytes": GaugeMetricFamily(
                "opskit_wal_spool_limit_bytes",
                "wal.max_spool: past it the streamer stops with exit 4.",
                labels=["target"],
            ),
            "slot_lag_bytes": GaugeMetricFamily(
                "opskit_wal_slot_lag_bytes",
                "WAL the server keeps for the streamer's replication slot (current LSN - restart_lsn); "
                "bound it with max_slot_wal_keep_size.",
                labels=["target"],
            ),
            "archive_lag_bytes": GaugeMetricFamily(
                "opskit_wal_archive_lag_bytes",
                "WAL written but not archived as a whole segment (current LSN - end of the newest archived segment).",
                labels=["target"],
            ),
        }
        failures = CounterMetricFamily(
            "opskit_wal_ship_failures",
            "WAL stores the streamer could not complete (the WAL stays in the spool and is retried).",
            labels=["target"],
        )
        storage_up = GaugeMetricFamily(
            "opskit_wal_stream_storage_up",
            "1 when the streamer's last store succeeded, 0 while the storage cannot be reached.",
            labels=["target"],
        )
        for target, view in sorted(views.items()):
            for attribute, family in gauges.items():
                value = getattr(view, attribute)
                if value is not None:
                    family.add_metric([target], value)
            if view.ship_failures is not None:
                failures.add_metric([target], view.ship_failures)
            if view.storage_up is not None:
                storage_up.add_metric([target], 1 if view.storage_up else 0)
        yield from gauges.values()
        yield failures
        yield storage_up


def _metric_targets(ctx: AppContext, targets: Iterable[str] | None) -> list[str]:
    """Return the target labels to export: ``targets`` (default: all), a server target as its derived targets."""
    names = list(ctx.config.targets) if targets is None else list(targets)
    return [t.name for name in names for t in server_backup.covered_targets(ctx, ctx.config.target(name))]


def _remove(gauge: Gauge | Counter, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)


def _manifest_mtime(storage: Storage, manifest: Manifest) -> datetime | None:
    key = manifest_key(manifest.target, manifest.id)
    for info in storage.list(key):
        if info.key == key:
            return info.modified
    return None


def collect(ctx: AppContext) -> Metrics:
    """Return a Metrics registry filled from the stored catalog of every configured target."""
    metrics = Metrics()
    metrics.refresh(ctx)
    return metrics
