"""``opskit daemon``: load jobs, open the ledger, serve health and metrics, run until a signal.

Start-up order is fail-fast: every job file is validated and every action resolved before
anything is scheduled, so a bad job file stops the daemon at start with the file and the
reason (exit 2) instead of failing at 3 a.m.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from opskit import pipeline
from opskit.config.daemon import DaemonSettings, parse_listen
from opskit.config.model import Config
from opskit.config.notify import NotifySettings
from opskit.context import AppContext
from opskit.core.errors import ConfigError, OpskitError
from opskit.core.log import get_logger
from opskit.daemon.http import HealthServer
from opskit.daemon.jobs import Job, load_jobs, resolve_action
from opskit.daemon.ledger import Ledger
from opskit.daemon.scheduler import Runner, Scheduler
from opskit.ops.metrics import Metrics
from opskit.secrets.references import Secret, SecretRef

log = get_logger(__name__)


def settings_of(config: Config) -> DaemonSettings:
    """Return the ``[daemon]`` settings, or the defaults when the table is absent."""
    settings = config.daemon
    return settings if isinstance(settings, DaemonSettings) else DaemonSettings()


def control_connection(config: Config, settings: DaemonSettings, jobs: list[Job]) -> tuple[str, SecretRef | None]:
    """Return (dsn, password reference) of the ledger's database.

    ``daemon.control_dsn`` when set; otherwise the control DSN (or DSN) of the first job's
    target, so a single-database setup needs no extra configuration.
    """
    if settings.control_dsn is not None:
        return settings.control_dsn, settings.control_password
    target = config.target(next((job.target for job in jobs if job.target), None) if jobs else None)
    if target.control_dsn:
        return target.control_dsn, settings.control_password or target.password
    return target.dsn, settings.control_password or target.password


@dataclass
class Daemon:
    """The assembled daemon: scheduler, runner, ledger, metrics and HTTP server."""

    ctx: AppContext
    jobs: list[Job]
    ledger: Ledger
    runner: Runner
    scheduler: Scheduler
    metrics: Metrics
    server: HealthServer
    jobs_dir: Path = Path("jobs")

    def livez(self) -> tuple[bool, dict[str, Any]]:
        """Return (alive, detail) with no external calls."""
        alive = self.scheduler.alive()
        return alive, {
            "scheduler": "running" if alive else "stopped",
            "running_jobs": sorted(self.runner.running),
        }

    def readyz(self) -> tuple[bool, dict[str, Any]]:
        """Return (ready, per-check detail): secrets resolvable, control database and storages reachable."""
        checks: dict[str, str] = {}
        for name, ref in _secret_refs(self.ctx.config):
            checks[f"secret:{name}"] = _probe(ref.resolve)
        checks["control_database"] = _probe(self.ledger.check)
        recipients = self.ctx.config.encryption.recipients
        if recipients:
            # A recipient that is not an age key fails every backup: not ready, as config check says.
            checks["encryption_recipients"] = _probe(lambda: pipeline.parse_recipients(recipients))
        for name in _storages_of(self.ctx.config, self.jobs):
            checks[f"storage:{name}"] = _probe(lambda name=name: self.ctx.storage(name).exists(".opskit-readyz"))
        ready = all(value == "ok" for value in checks.values())
        return ready, {"checks": checks}

    def start(self) -> None:
        """Create the ledger table, compute metrics from the catalog and the ledger, start HTTP and the scheduler."""
        self.ledger.ensure_table()
        self._job_metrics()
        try:
            self.metrics.refresh(self.ctx, _targets_of(self.ctx.config, self.jobs))
        except OpskitError as exc:  # metrics must not stop the daemon from running backups
            log.warning("metrics not computed at start", error=exc.message)
        self.server.start()
        self.scheduler.start()

    def reload(self) -> bool:
        """Read the job files again and schedule them in place of the current ones (SIGHUP); return True if done.

        A bad job file changes nothing: the daemon logs why and keeps the jobs it has, so a typo
        saved while it runs never stops the backups. Only the job files are re-read; a change to
        the config file (targets, storages, [daemon]) needs a restart.
        """
        try:
            jobs = load_valid_jobs(self.ctx, self.jobs_dir)
        except ConfigError as exc:
            log.error(
                "job files not reloaded: the daemon keeps its current jobs",
                jobs_dir=str(self.jobs_dir),
                error=exc.message,
                jobs=[job.name for job in self.jobs],
            )
            return False
        old = self.jobs
        added, removed = self.scheduler.replace_jobs(jobs)
        self.jobs = jobs
        # A removed job's series would otherwise stay exported, and a failing one alert for ever.
        self.metrics.forget_jobs((job.name, job.action) for job in old if job.name in removed)
        self._job_metrics()
        log.info("job files reloaded", jobs=[job.name for job in jobs], added=added, removed=removed)
        return True

    def _job_metrics(self) -> None:
        """Export every current job's run counts (zeros until it runs) and its last success and failure times.

        The times come from the ledger (every replica's runs), so a restart forgets no failure. Never
        raises: an unreadable ledger is a warning, and the times then follow this process's runs only.
        """
        self.metrics.add_jobs((job.name, job.action) for job in self.jobs)
        names = {job.name for job in self.jobs}
        try:
            results = self.ledger.job_results()
        except OpskitError as exc:
            log.warning("job metrics not read from the ledger", error=exc.message)
            return
        self.metrics.set_job_results(
            {name: (found.last_success, found.last_failure) for name, found in results.items() if name in names}
        )

    def stop(self) -> bool:
        """Stop scheduling and running (see Scheduler.stop), then close the HTTP server."""
        finished = self.scheduler.stop()
        self.server.stop()
        return finished


def load_valid_jobs(ctx: AppContext, jobs_dir: Path) -> list[Job]:
    """Return the jobs of ``jobs_dir``, every file validated and every action resolved.

    Raises ConfigError naming the first bad job file and why.
    """
    jobs = load_jobs(jobs_dir, ctx.config)
    for job in jobs:
        try:
            resolve_action(job.action)
        except ConfigError as exc:
            raise ConfigError(f"job file {job.source}: {exc.message}", hint=exc.hint) from exc
    return jobs


def build_daemon(ctx: AppContext, jobs_dir: Path | None = None, listen: str | None = None) -> Daemon:
    """Validate jobs and settings and assemble a daemon (nothing started yet).

    Raises ConfigError for a bad job file, an unavailable action or a bad listen address,
    UnreachableError when the control database cannot be reached.
    """
    settings = settings_of(ctx.config)
    jobs_dir = jobs_dir or settings.jobs_dir
    jobs = load_valid_jobs(ctx, jobs_dir)
    try:
        host, port = parse_listen(listen or settings.listen)
    except ValueError as exc:
        raise ConfigError(f"bad listen address: {exc}") from exc
    dsn, password_ref = control_connection(ctx.config, settings, jobs)
    password: Secret | None = password_ref.resolve() if password_ref is not None else None
    ledger = Ledger(dsn, table=settings.ledger_table, password=password)
    metrics = Metrics()
    notify_settings = ctx.config.notify
    runner = Runner(ctx.config, ledger, metrics, notify_settings, clock=ctx.clock, metrics_ctx=ctx)
    scheduler = Scheduler(jobs, runner, settings.shutdown_grace)
    holder: dict[str, Daemon] = {}
    server = HealthServer(
        host,
        port,
        livez=lambda: holder["daemon"].livez(),
        readyz=lambda: holder["daemon"].readyz(),
        metrics=metrics.exposition,
    )
    daemon = Daemon(ctx, jobs, ledger, runner, scheduler, metrics, server, jobs_dir)
    holder["daemon"] = daemon
    return daemon


def run(ctx: AppContext, jobs_dir: Path | None = None, listen: str | None = None) -> int:
    """Run the daemon until SIGTERM or SIGINT, re-reading the job files on SIGHUP; return the exit code.

    Returns 0 after a clean stop. SIGHUP's default action would end the process at once, in the
    middle of a run (no abort, its ledger row left ``running``): it is what ``systemctl reload``
    and a closed terminal send, so it reloads instead (:meth:`Daemon.reload`).
    """
    daemon = build_daemon(ctx, jobs_dir, listen)
    stop = threading.Event()
    reload = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            log.info("signal received: reloading job files", signal="SIGHUP")
            reload.set()
            return
        log.info("signal received: stopping", signal=signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        daemon.start()
        log.info("daemon started", jobs=[job.name for job in daemon.jobs], ledger=daemon.ledger.table_name)
        while not stop.wait(1.0):
            if reload.is_set():
                reload.clear()
                daemon.reload()
        finished = daemon.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not finished:
        # Worker threads still run actions that ignored ctx.cancel; the interpreter would wait
        # for them at exit, so leave now. Their manifests were never written: no backup exists.
        log.error("daemon stopped with runs still in progress", jobs=sorted(daemon.runner.running))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    log.info("daemon stopped", clean=True)
    return 0


def _probe(check: Any) -> str:
    try:
        check()
    except OpskitError as exc:
        return exc.one_line()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def _targets_of(config: Config, jobs: list[Job]) -> list[str]:
    names = {job.target for job in jobs if job.target}
    if any(job.target is None for job in jobs):
        names.update(config.targets)
    return sorted(names)


def _storages_of(config: Config, jobs: list[Job]) -> list[str]:
    names: dict[str, None] = {}
    for target in _targets_of(config, jobs):
        names.update(dict.fromkeys(config.target(target).storages))
    return list(names)


def _secret_refs(config: Config) -> list[tuple[str, SecretRef]]:
    refs: list[tuple[str, SecretRef]] = []
    for target in config.targets.values():
        if target.password is not None:
            refs.append((f"targets.{target.name}.password", target.password))
    for storage in config.storages.values():
        for key, value in storage.options.items():
            if isinstance(value, SecretRef):
                refs.append((f"storages.{storage.name}.{key}", value))
    if config.encryption.identity is not None:
        refs.append(("encryption.identity", config.encryption.identity))
    notify_settings = config.notify
    if isinstance(notify_settings, NotifySettings):
        for key in ("webhooks", "pings"):
            for index, ref in enumerate(getattr(notify_settings, key)):
                if not ref.is_literal:
                    refs.append((f"notify.{key}[{index}]", ref))
    return refs
