"""The daemon's run loop: APScheduler fires jobs, the ledger decides who runs a slot.

- APScheduler 3.11 ``BackgroundScheduler``: ``coalesce=True`` (a backlog of missed slots
  becomes one run), ``max_instances=2`` (one run, and one firing that finds it still running
  and says so: APScheduler's own ``max_instances=1`` would drop that slot with a line that names
  neither the slot nor the run in the way), and a ``misfire_grace_time`` in hours per job
  (APScheduler's default of one second silently skips a run that starts a little late).
- Each firing computes its slot (the latest scheduled time at or before now), claims it in
  the ledger, and only then calls the action. At start-up each job's latest due slot, if it
  is within the job's misfire grace and has no successful run, is caught up.
- A slot that fires while its job still runs an earlier slot (here or on another replica) is
  skipped with a warning naming the slot and the run in the way, and counted
  (``opskit_job_skipped_total``). A slot older than the run in progress (a catch-up that
  started late) is superseded by that run, not skipped.
- A job's ``timeout``: when a run outlasts it, the run's own cancel event is set (what a
  shutdown does to every run), the ledger records ``timed_out``.
- ``replace_jobs()`` (SIGHUP): the job files are read again and scheduled in place of the old ones.
- ``stop()`` (SIGTERM/SIGINT): stop claiming; let running jobs finish for up to the grace
  period; then set ``ctx.cancel`` so they abort cleanly (no manifest, uploads aborted).
  Each run has a cancel event of its own, set by the shutdown (:class:`ShutdownEvent`) or by
  its job's timeout, so a timeout cancels one run and a shutdown all of them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from opskit import actions
from opskit.config.model import Config
from opskit.config.notify import NotifySettings
from opskit.context import AppContext
from opskit.core.clock import utc_now
from opskit.core.errors import OpskitError
from opskit.core.log import get_logger
from opskit.core.units import format_duration
from opskit.daemon import ledger as ledger_mod
from opskit.daemon.jobs import Job, previous_fire_time, resolve_action
from opskit.daemon.ledger import Busy, Ledger
from opskit.ops.metrics import Metrics
from opskit.ops.notify import ABORTED, FAILURE, SUCCESS, Event, notify
from opskit.ops.signals import details_of

log = get_logger(__name__)

HEARTBEAT_SECONDS = 5.0
# How long cancelled actions get to unwind (abort uploads, kill pg_dump) after the grace period.
ABORT_WAIT = timedelta(seconds=20)
# Worker threads beyond one per job: jobs added by a reload (SIGHUP) get their own thread too.
RELOAD_HEADROOM = 8
# APScheduler instances per job: the run, plus the firing of a later slot that finds it running
# (Runner.fire returns at once after saying so).
MAX_INSTANCES = 2
# How a ledger result reads in the metrics (opskit_job_runs_total's result label).
_METRIC_RESULTS = {
    ledger_mod.SUCCESS: "success",
    ledger_mod.FAILED: "failure",
    ledger_mod.ABORTED: "aborted",
    ledger_mod.TIMED_OUT: "timed_out",
}


class ShutdownEvent(threading.Event):
    """The daemon's shutdown flag: setting it also sets the cancel event of every run linked to it.

    Each run gets an event of its own (its job's timeout sets only that one); the shutdown has to
    reach all of them, through the same ``ctx.cancel`` every action already watches.
    """

    def __init__(self) -> None:
        super().__init__()
        self._guard = threading.Lock()
        self._runs: set[threading.Event] = set()

    def set(self) -> None:
        """Set the flag and the cancel event of every linked run."""
        with self._guard:
            super().set()
            runs = list(self._runs)
        for run in runs:
            run.set()

    def link(self) -> threading.Event:
        """Return a new run cancel event, set now if the shutdown already began, and with it from then on."""
        run = threading.Event()
        with self._guard:
            self._runs.add(run)
            if self.is_set():
                run.set()
        return run

    def unlink(self, run: threading.Event) -> None:
        """Forget a finished run's event."""
        with self._guard:
            self._runs.discard(run)


@dataclass
class RunOutcome:
    """How one claimed run ended."""

    job: str
    slot: datetime
    result: str  # ledger result: success, failed, aborted
    duration_seconds: float
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Runner:
    """Runs job slots: claim in the ledger, notify, call the action, record, refresh metrics."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        metrics: Metrics,
        notify_settings: NotifySettings | None = None,
        clock: Callable[[], datetime] = utc_now,
        metrics_ctx: AppContext | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.metrics = metrics
        self.notify_settings = notify_settings
        self.clock = clock
        self.cancel = ShutdownEvent()
        self.stopping = threading.Event()
        self.metrics_ctx = metrics_ctx or AppContext(config=config, clock=clock)
        self._running: dict[str, datetime] = {}
        self._idle = threading.Condition()

    # ------------------------------------------------------------------ state

    @property
    def running(self) -> dict[str, datetime]:
        """Return a copy of {job name: slot} of the runs in progress."""
        with self._idle:
            return dict(self._running)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no run is in progress; return False if ``timeout`` seconds passed first."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    # ------------------------------------------------------------------ running

    def fire(self, job: Job, slot: datetime | None = None, catch_up: bool = False) -> RunOutcome | None:
        """Run ``job`` for ``slot`` (default: the latest slot at or before now) if this replica claims it.

        Returns the outcome, or None when the slot was not ours (claimed elsewhere, job busy,
        shutting down, ledger unreachable). A slot skipped because the job still runs an earlier
        one is a warning and a count (:meth:`_skipped`). Never raises: it is called from scheduler threads.
        """
        if self.stopping.is_set():
            return None
        now = self.clock()
        slot = slot or previous_fire_time(job.trigger, now)
        if slot is None:
            return None
        running_slot = self.running.get(job.name)
        if running_slot is not None:
            # This replica runs the job: no need to ask the ledger who holds it.
            if running_slot < slot:
                self._skipped(job, slot, Busy(job.name, running_slot, self.ledger.owner))
            return None
        try:
            claim = self.ledger.try_claim(job.name, slot, retry_unsuccessful=catch_up)
            if isinstance(claim, Busy) and claim.slot is None:
                # The lock was held but no run is recorded: its holder finished in between. Once more.
                claim = self.ledger.try_claim(job.name, slot, retry_unsuccessful=catch_up)
        except OpskitError as exc:
            log.error("job not run: cannot claim", job=job.name, slot=slot.isoformat(), error=exc.message)
            notify(
                Event(FAILURE, job.name, job.action, job.target, slot.isoformat(), error=exc.one_line()),
                self.notify_settings,
                self.cancel,
            )
            return None
        if isinstance(claim, Busy) and (claim.slot is None or claim.slot < slot):
            self._skipped(job, slot, claim)
            return None
        if claim is None or isinstance(claim, Busy):
            # Claimed already, or the run in progress is of this slot or a newer one (a catch-up that
            # started late): nothing is lost.
            log.debug("slot not ours", job=job.name, slot=slot.isoformat())
            return None
        with self._idle:
            self._running[job.name] = slot
        try:
            outcome = self._run_claimed(job, slot, catch_up, claim.attempt)
            self.ledger.finish(claim, outcome.result, outcome.error, outcome.details)
        finally:
            with self._idle:
                self._running.pop(job.name, None)
                self._idle.notify_all()
        self._after_run(job, outcome)
        return outcome

    def _skipped(self, job: Job, slot: datetime, busy: Busy) -> None:
        """Say that ``slot`` of ``job`` will not run because ``busy`` holds the job, and count it."""
        log.warning(
            "slot skipped: the job is still running an earlier slot",
            job=job.name,
            slot=slot.isoformat(),
            running_slot=busy.slot.isoformat() if busy.slot else None,
            running_owner=busy.owner,
            running_since=busy.claimed_at.isoformat() if busy.claimed_at else None,
        )
        self.metrics.record_job_skip(job.name)

    def _run_claimed(self, job: Job, slot: datetime, catch_up: bool, attempt: int) -> RunOutcome:
        slot_text = slot.isoformat()
        with structlog.contextvars.bound_contextvars(job=job.name, target=job.target, slot=slot_text):
            # Pings, webhooks, hooks and the run record are sent by actions.call, as for a CLI run.
            log.info("job started", action=job.action, catch_up=catch_up, attempt=attempt)
            cancel = self.cancel.link()
            timed_out = threading.Event()
            timer = self._start_timeout(job, cancel, timed_out)
            try:
                return self._call(job, slot, cancel, timed_out)
            finally:
                if timer is not None:
                    timer.cancel()
                self.cancel.unlink(cancel)

    def _start_timeout(self, job: Job, cancel: threading.Event, timed_out: threading.Event) -> threading.Timer | None:
        """Return a started timer that cancels the run at the job's timeout (None: the job has none)."""
        if job.timeout is None:
            return None
        timeout = job.timeout
        context = structlog.contextvars.get_contextvars()

        def expire() -> None:
            if cancel.is_set():
                return  # a shutdown got there first: the run is aborted, not timed out
            timed_out.set()
            with structlog.contextvars.bound_contextvars(**context):
                log.error("job timed out: cancelling the run", action=job.action, timeout=format_duration(timeout))
            cancel.set()

        timer = threading.Timer(timeout.total_seconds(), expire)
        timer.name = f"opskit-timeout:{job.name}"
        timer.daemon = True
        timer.start()
        return timer

    def _call(self, job: Job, slot: datetime, cancel: threading.Event, timed_out: threading.Event) -> RunOutcome:
        """Call the job's action with the run's cancel event; return how the run ended (never raises)."""
        started = time.monotonic()
        details: dict[str, Any] = {}
        error: str | None = None
        try:
            action = resolve_action(job.action)
            ctx = AppContext(config=self.config, clock=self.clock, cancel=cancel)
            # Some actions report a failed outcome in their result (a drill check, a failed copy):
            # raise_outcome turns it into the error, after the run's signals went out.
            result = actions.call(
                job.action,
                ctx,
                job=job.name,
                slot=slot.isoformat(),
                raise_outcome=True,
                function=action,
                target=job.target,
                **dict(job.args),
            )
            details = details_of(result)
            outcome = ledger_mod.SUCCESS
        except OpskitError as exc:
            error, outcome = self._failed(job, exc.one_line(), timed_out)
        except Exception as exc:  # a bug in an action must not kill the scheduler thread
            error, outcome = self._failed(job, f"unexpected error: {type(exc).__name__}: {exc}", timed_out)
            log.exception("job raised an unexpected error", action=job.action)
        duration = time.monotonic() - started
        # The one summary line per run.
        log_method = log.info if outcome == ledger_mod.SUCCESS else log.error
        log_method(
            "job finished",
            action=job.action,
            result=outcome,
            duration_seconds=round(duration, 3),
            error=error,
            **{k: v for k, v in details.items() if k in ("backup_id", "size")},
        )
        return RunOutcome(job.name, slot, outcome, duration, error, details)

    def _failed(self, job: Job, error: str, timed_out: threading.Event) -> tuple[str, str]:
        """Return (error, ledger result) of a run that raised ``error``: timed out, aborted by a shutdown, or failed."""
        if timed_out.is_set() and job.timeout is not None:
            # The action's own words say "cancelled (shutdown requested)": the cause was the timeout.
            return f"timed out after {format_duration(job.timeout)} (the job's timeout): {error}", ledger_mod.TIMED_OUT
        return error, (ledger_mod.ABORTED if self.cancel.is_set() else ledger_mod.FAILED)

    def _after_run(self, job: Job, outcome: RunOutcome) -> None:
        self.metrics.record_job_run(job.name, job.action, _METRIC_RESULTS[outcome.result], self.clock())
        kind = {ledger_mod.SUCCESS: SUCCESS, ledger_mod.ABORTED: ABORTED}.get(outcome.result, FAILURE)
        if job.action == "backup":
            target = job.target or (next(iter(self.config.targets)) if len(self.config.targets) == 1 else None)
            if target is not None:
                self.metrics.record_run(target, {SUCCESS: "success", ABORTED: "aborted"}.get(kind, "failure"))
        try:
            targets = [job.target] if job.target else None
            self.metrics.refresh(self.metrics_ctx, targets)
        except Exception as exc:  # metrics are best effort; the run already happened
            log.warning("metrics not refreshed", job=job.name, error=f"{type(exc).__name__}: {exc}")


class Scheduler:
    """APScheduler wired to a Runner, with start-up catch-up, a heartbeat and a graceful stop."""

    def __init__(self, jobs: list[Job], runner: Runner, shutdown_grace: timedelta) -> None:
        self.jobs = jobs
        self.runner = runner
        self.shutdown_grace = shutdown_grace
        self.last_heartbeat = time.monotonic()
        self.started = False
        # One thread per job plus one for a catch-up run, so no job waits for another's thread, and
        # room for jobs a reload adds (threads start only when used).
        self.workers = len(jobs) + 1 + RELOAD_HEADROOM
        self._aps = BackgroundScheduler(
            timezone="UTC",
            executors={
                "default": ThreadPoolExecutor(max_workers=self.workers),
                # Its own executor: a heartbeat must not queue behind long jobs.
                "heartbeat": ThreadPoolExecutor(max_workers=1),
            },
            job_defaults={"coalesce": True, "max_instances": 1},
        )

    def start(self, catch_up: bool = True) -> None:
        """Add every job, start the scheduler thread, and queue catch-up runs of unrun due slots."""
        self._add_jobs(self.jobs)
        self._aps.add_job(
            self._beat, "interval", seconds=HEARTBEAT_SECONDS, id="opskit-heartbeat", executor="heartbeat"
        )
        self._aps.start()
        self.started = True
        if catch_up:
            self._queue_catch_up()
        self._log_scheduled(self.jobs)

    def replace_jobs(self, jobs: list[Job]) -> tuple[list[str], list[str]]:
        """Schedule ``jobs`` instead of the current ones (SIGHUP); return (added, removed) job names.

        A run in progress finishes as it started (its thread holds its own Job); a removed job
        fires no more, a changed one fires on its new schedule. No catch-up runs are queued:
        catch-up is for slots a stopped daemon missed, and this one was running.
        """
        old, new = {job.name for job in self.jobs}, {job.name for job in jobs}
        for name in sorted(old - new):
            with contextlib.suppress(JobLookupError):  # a job can be gone already only if never added
                self._aps.remove_job(name)
        self._add_jobs(jobs)
        self.jobs = jobs
        if len(jobs) + 1 > self.workers:
            # The pool is sized at start; past it a due job waits for another's thread to free up.
            log.warning(
                "more jobs than worker threads: a due job may wait for another to finish; restart the daemon",
                jobs=len(jobs),
                workers=self.workers,
            )
        self._log_scheduled(jobs)
        return sorted(new - old), sorted(old - new)

    def _add_jobs(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._aps.add_job(
                self.runner.fire,
                trigger=job.trigger,
                args=[job],
                id=job.name,
                name=job.name,
                misfire_grace_time=int(job.misfire_grace_time.total_seconds()),
                coalesce=True,
                max_instances=MAX_INSTANCES,
                replace_existing=True,
            )

    def _log_scheduled(self, jobs: list[Job]) -> None:
        for job in jobs:
            aps_job = self._aps.get_job(job.name)
            log.info(
                "job scheduled",
                job=job.name,
                action=job.action,
                target=job.target,
                schedule=job.schedule,
                next_run=aps_job.next_run_time.isoformat() if aps_job and aps_job.next_run_time else None,
            )

    def _queue_catch_up(self) -> None:
        now = self.runner.clock()
        for job in self.jobs:
            slot = previous_fire_time(job.trigger, now)
            if slot is None or now - slot > job.misfire_grace_time:
                continue
            self._aps.add_job(
                self.runner.fire,
                "date",
                run_date=now,
                args=[job],
                kwargs={"slot": slot, "catch_up": True},
                id=f"catch-up:{job.name}",
                misfire_grace_time=int(job.misfire_grace_time.total_seconds()),
            )

    def _beat(self) -> None:
        self.last_heartbeat = time.monotonic()

    def alive(self) -> bool:
        """Return True when the scheduler runs and its loop dispatched a heartbeat recently."""
        return self.started and self._aps.running and time.monotonic() - self.last_heartbeat < 4 * HEARTBEAT_SECONDS

    def stop(self) -> bool:
        """Stop claiming, wait up to the grace period, then cancel running jobs; return True if all ended.

        The scheduler loop stops at once; runs in progress continue in their threads until
        they finish or honour ``ctx.cancel``.
        """
        self.runner.stopping.set()
        if self._aps.running:
            self._aps.shutdown(wait=False)
        running = self.runner.running
        if running:
            log.info(
                "shutting down: waiting for running jobs",
                jobs=sorted(running),
                grace_seconds=self.shutdown_grace.total_seconds(),
            )
        if self.runner.wait_idle(self.shutdown_grace.total_seconds()):
            return True
        log.warning("grace period over: aborting running jobs", jobs=sorted(self.runner.running))
        self.runner.cancel.set()
        if self.runner.wait_idle(ABORT_WAIT.total_seconds()):
            return True
        log.error("jobs did not abort in time", jobs=sorted(self.runner.running))
        return False
