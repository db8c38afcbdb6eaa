"""The migration state, computed without a database: Flyway's ``info`` from scripts and history rows.

Pure functions over values: :func:`build_state` pairs the resolved scripts with the rows of the
history table and gives every migration its state (``docs/flyway-compat.md`` §4.3);
:func:`version_from_rows` is the schema version Flyway would report. Validation of a state is
:mod:`opskit.flyway.validation`; the database runner is :mod:`opskit.flyway.engine`. Nothing here
opens a connection or reads the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from opskit.core.errors import ConfigError
from opskit.flyway.history import AppliedRow
from opskit.flyway.names import Version
from opskit.flyway.scripts import Script, order_key

# Display names of Flyway's MigrationState (the JSON "state" values).
PENDING = "Pending"
ABOVE_TARGET = "Above Target"
BELOW_BASELINE = "Below Baseline"
BASELINE_IGNORED = "Ignored (Baseline)"
BASELINE = "Baseline"
IGNORED = "Ignored"
SUCCESS = "Success"
OUT_OF_ORDER = "Out of Order"
FAILED = "Failed"
MISSING = "Missing"
MISSING_FAILED = "Failed (Missing)"
FUTURE = "Future"
FUTURE_FAILED = "Failed (Future)"
OUTDATED = "Outdated"
SUPERSEDED = "Superseded"
DELETED = "Deleted"
FAILED_STATES = frozenset({FAILED, MISSING_FAILED, FUTURE_FAILED})


# --------------------------------------------------------------------------- resolved migrations


@dataclass(frozen=True)
class Resolved:
    """A script with the checksums Flyway resolves for it (placeholders applied for repeatables)."""

    script: Script
    checksum: int
    equivalent_checksum: int | None

    @property
    def version(self) -> Version | None:
        """Return the version (None for a repeatable)."""
        return self.script.version

    @property
    def description(self) -> str:
        """Return the description from the file name."""
        return self.script.description

    def checksum_matches(self, stored: int | None) -> bool:
        """Return True when ``stored`` equals the checksum or its raw equivalent (Flyway's checksumMatches)."""
        return stored == self.checksum or (self.equivalent_checksum is not None and stored == self.equivalent_checksum)


# --------------------------------------------------------------------------- info


@dataclass(frozen=True)
class Target:
    """The ``target`` setting: ``latest``, ``current``, ``next`` or a version (``2.0?`` may be missing)."""

    kind: str  # "latest" | "current" | "next" | "version"
    version: Version | None = None
    optional: bool = False

    @classmethod
    def parse(cls, text: str) -> Target:
        """Parse the setting. Raises ConfigError for something that is not a version or a keyword."""
        lowered = text.strip().lower()
        if lowered in ("latest", "current", "next"):
            return cls(lowered)
        optional = lowered.endswith("?")
        raw = text.strip().rstrip("?")
        try:
            return cls("version", Version.parse(raw), optional)
        except ValueError:
            raise ConfigError(
                f"invalid target '{text}'", hint="use latest, current, next or a version such as 2.1"
            ) from None


@dataclass
class Info:
    """One line of ``info``: a resolved script, an applied row, or both, and its state."""

    resolved: Resolved | None
    applied: AppliedRow | None
    state: str = PENDING
    out_of_order: bool = False
    deleted: bool = False

    @property
    def version(self) -> Version | None:
        """Return the version of the row or the script (None for repeatables and markers)."""
        if self.applied is not None:
            return self.applied.parsed_version
        return self.resolved.version if self.resolved else None

    @property
    def version_text(self) -> str:
        """Return the version as Flyway shows it, or ``""``."""
        if self.applied is not None:
            return self.applied.version or ""
        return self.resolved.version.text if self.resolved and self.resolved.version else ""

    @property
    def raw_version(self) -> str:
        """Return the version as spelled in the file name (``1_1``), or the stored one."""
        if self.resolved is not None and self.resolved.version is not None:
            return self.resolved.version.raw
        return self.version_text

    @property
    def description(self) -> str:
        """Return the stored description, else the resolved one."""
        if self.applied is not None:
            return self.applied.description
        return self.resolved.description if self.resolved else ""

    @property
    def type(self) -> str:
        """Return the row's type, or ``SQL`` for a script not applied yet."""
        return self.applied.type if self.applied is not None else "SQL"

    @property
    def is_repeatable(self) -> bool:
        """Return True for repeatable migrations (rows or scripts without a version, markers excluded)."""
        if self.applied is not None:
            return self.applied.version is None and not self.applied.is_synthetic
        return self.resolved is not None and self.resolved.version is None

    @property
    def is_synthetic(self) -> bool:
        """Return True for SCHEMA, DELETE and BASELINE rows."""
        return self.applied is not None and self.applied.is_synthetic

    @property
    def category(self) -> str:
        """Return the JSON ``category``: Versioned, Repeatable, Baseline, or ``""`` for markers."""
        if self.applied is not None and self.applied.is_baseline:
            return "Baseline" if self.applied.type != "BASELINE" else ""
        if self.is_synthetic:
            return ""
        return "Repeatable" if self.is_repeatable else "Versioned"

    @property
    def label(self) -> str:
        """Return how messages name it: the version, else the description."""
        return self.version_text or self.description

    @property
    def checksum(self) -> int | None:
        """Return the stored checksum, else the resolved one."""
        if self.applied is not None:
            return self.applied.checksum
        return self.resolved.checksum if self.resolved else None


@dataclass
class InfoState:
    """All migrations with their states, plus what Flyway's MigrationInfoContext knows."""

    infos: list[Info]
    baseline: Version | None = None
    last_applied: Version | None = None
    last_resolved: Version | None = None
    target: Version | None = None

    def pending(self) -> list[Info]:
        """Return the pending migrations in the order they would be applied."""
        waiting = [i for i in self.infos if i.state == PENDING and i.applied is None]
        return sorted(waiting, key=lambda i: order_key(i.resolved.script))  # type: ignore[union-attr]

    def current(self) -> Info | None:
        """Return the current version's migration: the highest applied non-deleted versioned one."""
        best: Info | None = None
        for info in self.infos:
            if info.applied is None or info.state == DELETED or info.applied.type in ("DELETE", "SCHEMA"):
                continue
            version = info.version
            if version is not None and (best is None or version > best.version):  # type: ignore[operator]
                best = info
        if best is not None:
            return best
        repeatables = [i for i in self.infos if i.applied is not None and i.is_repeatable and i.state != DELETED]
        return repeatables[-1] if repeatables else None

    @property
    def schema_version(self) -> str | None:
        """Return the current schema version text, or None when nothing versioned is applied."""
        current = self.current()
        return current.version_text or None if current is not None else None

    def failed(self, future_ignored: bool = True) -> list[Info]:
        """Return the failed rows (a Failed (Future) row counts only when future is not ignored)."""
        return [
            i
            for i in self.infos
            if i.state in (FAILED, MISSING_FAILED) or (i.state == FUTURE_FAILED and not future_ignored)
        ]


def build_state(
    resolved: Sequence[Resolved], applied: Sequence[AppliedRow], target: Target, out_of_order: bool
) -> InfoState:
    """Pair resolved scripts with history rows and return every migration with its state (§4.3).

    Versioned rows pair by version; repeatable rows by description, where only the highest
    rank per description is the latest run. The infos hold the applied rows first (by rank),
    then the scripts not applied yet in resolution order. Raises nothing.
    """
    by_version, by_description, last_resolved = _index_resolved(resolved)
    infos: list[Info] = [Info(None, row) for row in applied]
    baseline = _baseline_version(infos)
    _cancel_deleted(infos)
    last_applied = _mark_out_of_order(infos)
    target_version = last_applied if target.kind == "current" else target.version
    pending_versioned, latest_runs = _pair_with_scripts(infos, by_version, by_description)
    pending_repeatable = _repeatables_to_run(infos, by_description, latest_runs)

    state = InfoState(infos, baseline, last_applied, last_resolved, target_version)
    for info in infos:
        info.state = _applied_state(info, state, latest_runs)
    waiting = sorted(
        list(pending_versioned.values()) + list(pending_repeatable.values()), key=lambda r: order_key(r.script)
    )
    for item in waiting:
        info = Info(item, None)
        info.state = _unapplied_state(item, state, target, out_of_order)
        infos.append(info)
    if target.kind == "next":
        _keep_only_the_next(infos)
    return state


def _index_resolved(
    resolved: Sequence[Resolved],
) -> tuple[dict[Version, Resolved], dict[str, Resolved], Version | None]:
    """Return the scripts by version, the repeatables by description, and the highest version."""
    by_version: dict[Version, Resolved] = {}
    by_description: dict[str, Resolved] = {}
    last_resolved: Version | None = None
    for item in resolved:
        if item.version is not None:
            by_version[item.version] = item
            if last_resolved is None or item.version > last_resolved:
                last_resolved = item.version
        else:
            by_description[item.description] = item
    return by_version, by_description, last_resolved


def _rows(infos: Sequence[Info]) -> list[tuple[Info, AppliedRow]]:
    """Return each info of an applied row with its row (every info built from a row has one)."""
    return [(info, info.applied) for info in infos if info.applied is not None]


def _baseline_version(infos: Sequence[Info]) -> Version | None:
    """Return the version of the last baseline row, or None."""
    baseline: Version | None = None
    for _info, row in _rows(infos):
        if row.is_baseline and row.version:
            baseline = row.parsed_version
    return baseline


def _cancel_deleted(infos: Sequence[Info]) -> None:
    """Mark deleted the rows a DELETE marker cancels: the latest earlier live row of its version (or description)."""
    for index, (_info, row) in enumerate(_rows(infos)):
        if row.type != "DELETE" or not row.success:
            continue
        for earlier in reversed(infos[:index]):
            other = earlier.applied
            if other is None or other.is_synthetic or earlier.deleted:
                continue
            if row.version is not None:
                same = other.version is not None and other.parsed_version == row.parsed_version
            else:
                same = other.version is None and other.description == row.description
            if same:
                earlier.deleted = True
                break


def _mark_out_of_order(infos: Sequence[Info]) -> Version | None:
    """Flag the versioned rows applied after a higher version; return the highest applied version."""
    last_applied: Version | None = None
    for info, row in _rows(infos):
        if row.version is None or info.deleted or row.type in ("DELETE", "SCHEMA"):
            continue
        version = row.parsed_version
        if version is None:
            continue
        if last_applied is None or version > last_applied:
            last_applied = version
        else:
            info.out_of_order = True
    return last_applied


def _pair_with_scripts(
    infos: Sequence[Info], by_version: dict[Version, Resolved], by_description: dict[str, Resolved]
) -> tuple[dict[Version, Resolved], dict[str, int]]:
    """Attach each row's script; return the versioned scripts no row claims and each repeatable's latest rank."""
    pending_versioned = dict(by_version)
    latest_runs: dict[str, int] = {}
    for info, row in _rows(infos):
        if row.is_synthetic:
            continue
        if row.version is not None:
            version = row.parsed_version
            match = by_version.get(version) if version is not None else None
            if match is not None and not info.deleted:
                info.resolved = match
                pending_versioned.pop(version, None)  # type: ignore[arg-type]
        else:
            info.resolved = by_description.get(row.description)
            if not info.deleted:
                latest_runs[row.description] = max(
                    latest_runs.get(row.description, row.installed_rank), row.installed_rank
                )
    return pending_versioned, latest_runs


def _repeatables_to_run(
    infos: Sequence[Info], by_description: dict[str, Resolved], latest_runs: dict[str, int]
) -> dict[str, Resolved]:
    """Return the repeatables whose latest run is absent or has another checksum than the script now."""
    pending = dict(by_description)
    for info, row in _rows(infos):
        if (
            row.version is None
            and not row.is_synthetic
            and info.resolved is not None
            and not info.deleted
            and row.installed_rank == latest_runs.get(row.description)
            and info.resolved.checksum_matches(row.checksum)
        ):
            pending.pop(row.description, None)
    return pending


def _keep_only_the_next(infos: Sequence[Info]) -> None:
    """``target = next``: only the first pending migration is in reach; later versioned ones are above target."""
    first = True
    for info in infos:
        if info.applied is None and info.state == PENDING:
            if not first and info.resolved is not None and info.resolved.version is not None:
                info.state = ABOVE_TARGET
            first = False


def _applied_state(info: Info, context: InfoState, latest_runs: dict[str, int]) -> str:
    row = info.applied
    assert row is not None
    if info.deleted:
        return DELETED
    if row.is_baseline:
        return BASELINE
    if row.type in ("SCHEMA", "DELETE"):
        return SUCCESS
    if info.resolved is None:
        version = row.parsed_version
        if version is None or (context.last_resolved is not None and version < context.last_resolved):
            return MISSING if row.success else MISSING_FAILED
        return FUTURE if row.success else FUTURE_FAILED
    if not row.success:
        return FAILED
    if row.version is None:
        if row.installed_rank == latest_runs.get(row.description):
            return SUCCESS if info.resolved.checksum_matches(row.checksum) else OUTDATED
        return SUPERSEDED
    if info.out_of_order:
        return OUT_OF_ORDER
    return SUCCESS


def _unapplied_state(item: Resolved, context: InfoState, target: Target, out_of_order: bool) -> str:
    version = item.version
    if version is not None:
        if context.baseline is not None and version < context.baseline:
            return BELOW_BASELINE
        if context.baseline is not None and version == context.baseline:
            return BASELINE_IGNORED
        if target.kind != "next" and context.target is not None and version > context.target:
            return ABOVE_TARGET
        if context.last_applied is not None and version < context.last_applied and not out_of_order:
            return IGNORED
    if item.script.options.should_execute is False:
        return IGNORED
    return PENDING


def sort_infos_for_display(infos: Sequence[Info]) -> list[Info]:
    """Return infos with applied rows by rank first, then the rest in resolution order."""
    applied = sorted((i for i in infos if i.applied is not None), key=lambda i: i.applied.installed_rank)  # type: ignore[union-attr]
    rest = [i for i in infos if i.applied is None]
    return applied + rest


def version_from_rows(rows: Sequence[AppliedRow]) -> str | None:
    """Return the schema version Flyway's ``info`` would report from the history rows alone.

    The highest applied versioned row that no DELETE marker cancelled (baselines count), or
    None when there is no versioned row. Needs no migration scripts.
    """
    return build_state([], rows, Target("latest"), out_of_order=True).schema_version
