"""``opskit config check``: prove the whole configuration works before a backup depends on it.

Like ``pgbackrest check`` and ``barman check``, but for everything configured: the config
validates; every secret resolves (its value is never shown); every target accepts a
connection; the chosen pg_dump, pg_dumpall and pg_restore are at least the server's major
version; every storage takes a probe object (write, read, delete), and a storage that can
hold immutable objects says whether its bucket enforces them (S3 Object Lock); and the age identity
decrypts for the configured recipients. Literal secrets written into the file are warned
about. Each check is independent: one failure does not hide the others.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from opskit import pipeline
from opskit.backup import server as server_backup
from opskit.config import databases
from opskit.config.model import Config, TargetConfig
from opskit.context import AppContext
from opskit.core.errors import ConfigError, OpskitError
from opskit.core.log import get_logger
from opskit.core.redaction import redact_text
from opskit.pg import connection, tools
from opskit.secrets.references import SecretRef
from opskit.storage.base import ObjectLocks
from opskit.storage.registry import BACKENDS

log = get_logger(__name__)

OK = "OK"
WARN = "WARN"
FAIL = "FAIL"
# The client tools a target needs: backups use pg_dump and pg_dumpall, restores and drills pg_restore.
TOOLS = ("pg_dump", "pg_dumpall", "pg_restore")


@dataclass(frozen=True)
class CheckResult:
    """One line of the report: what was checked, OK/WARN/FAIL, why, and the exit code a FAIL maps to."""

    check: str
    status: str
    detail: str
    exit_code: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form of the line."""
        return {"check": self.check, "status": self.status, "detail": self.detail, "exit_code": self.exit_code}


@dataclass
class CheckReport:
    """Every check that ran, in order; the exit code is the highest of the failures (0 when none)."""

    results: list[CheckResult] = field(default_factory=list)
    source: str | None = None

    def add(self, check: str, status: str, detail: str, exit_code: int = 0) -> None:
        """Record one result; its detail is redacted once more, to be safe."""
        detail = " ".join(redact_text(detail).split())  # libpq's messages carry tabs and newlines
        self.results.append(CheckResult(check, status, detail, exit_code if status == FAIL else 0))

    @property
    def failures(self) -> list[CheckResult]:
        """Return the failed checks."""
        return [r for r in self.results if r.status == FAIL]

    @property
    def warnings(self) -> list[CheckResult]:
        """Return the checks that passed with a warning."""
        return [r for r in self.results if r.status == WARN]

    @property
    def exit_code(self) -> int:
        """Return the highest exit code among the failures: 2 config, 3 unreachable; 0 when all passed."""
        return max((r.exit_code or 1 for r in self.failures), default=0)

    @property
    def ok(self) -> bool:
        """Return True when nothing failed (warnings allowed)."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON document printed by ``--json``."""
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "config": self.source,
            "summary": {
                "ok": sum(r.status == OK for r in self.results),
                "warn": len(self.warnings),
                "fail": len(self.failures),
            },
            "checks": [r.to_dict() for r in self.results],
        }


def run(ctx: AppContext) -> CheckReport:
    """Run every check against the loaded config and return the report (never raises an OpskitError)."""
    config = ctx.config
    report = CheckReport(source=str(config.source) if config.source else None)
    report.add("config", OK, f"valid ({config.source})" if config.source else "no config file: zero-config defaults")
    _check_secrets(config, report)
    for target in config.targets.values():
        _check_target(ctx, target, report)
    for name in config.storages:
        if _guard(report, f"storage {name}", functools.partial(_check_storage, ctx, name)):
            _check_immutability(ctx, name, report)
    _check_encryption(config, report)
    if config.daemon is not None and config.daemon.control_dsn:
        _guard(report, "daemon control database", functools.partial(_check_control_database, config))
    log.info(
        "config check finished",
        ok=report.ok,
        failed=len(report.failures),
        warnings=len(report.warnings),
        exit_code=report.exit_code,
    )
    return report


def report_for_config_error(error: ConfigError, source: str | None = None) -> CheckReport:
    """Return a report with one FAIL per configuration problem (the config did not load)."""
    report = CheckReport(source=source)
    problems = error.problems or [error.one_line()]
    for problem in problems:
        report.add("config", FAIL, problem, error.exit_code)
    return report


# --------------------------------------------------------------------------- helpers


def _guard(report: CheckReport, check: str, action: Callable[[], str]) -> bool:
    """Run ``action`` (which returns an OK detail); record OK, or FAIL with the error. Return success."""
    try:
        detail = action()
    except OpskitError as exc:
        report.add(check, FAIL, exc.one_line(), exc.exit_code)
        return False
    except Exception as exc:  # a bug in a check must not hide the other checks
        report.add(check, FAIL, f"unexpected {type(exc).__name__}: {exc}", 1)
        return False
    report.add(check, OK, detail)
    return True


def secret_refs(config: Config) -> Iterator[tuple[str, SecretRef]]:
    """Yield (config path, reference) for every secret in the config, sections of other modules included."""
    yield from _walk(config, "", depth=0)


def _walk(value: Any, path: str, depth: int) -> Iterator[tuple[str, SecretRef]]:
    if depth > 8:
        return
    if isinstance(value, SecretRef):
        yield path, value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            # A storage's backend options sit directly under [storages.NAME] in the file.
            child = path if item.name == "options" else _join(path, item.name)
            yield from _walk(getattr(value, item.name), child, depth + 1)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, _join(path, str(key)), depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]", depth + 1)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------- checks


def _check_secrets(config: Config, report: CheckReport) -> None:
    for path, ref in secret_refs(config):
        check = f"secret {path}"
        if ref.is_literal:
            report.add(
                check,
                WARN,
                "written literally in the config file; use env:, file:, a secret manager reference "
                "or the OPSKIT_<KEY> / OPSKIT_<KEY>_FILE environment variables",
            )
            continue
        _guard(report, check, functools.partial(_resolve, ref))
    for target in config.targets.values():
        if _dsn_has_password(target):
            report.add(
                f"secret targets.{target.name}.dsn",
                WARN,
                "the dsn contains a password; move it to 'password' as a secret reference",
            )


def _resolve(ref: SecretRef) -> str:
    secret = ref.resolve()
    return f"resolved from {ref.describe()} ({len(secret.reveal())} characters, value not shown)"


def _dsn_has_password(target: TargetConfig) -> bool:
    pass

    try:
        return bool(connection.dsn_parts(target).get("password"))
    except ConfigError:
        return False  # reported by the connection check


def _check_target(ctx: AppContext, target: TargetConfig, report: CheckReport) -> None:
    pass

    facts: list[Any] = []

    def connect() -> str:
        with connection.connect(target) as conn:
            server = connection.server_facts(conn)
        facts.append(server)
        role = "superuser" if server.is_superuser else "not a superuser"
        return f"PostgreSQL {server.version} at {connection.describe(target)} as {server.user} ({role})"

    if not _guard(report, f"target {target.name}", connect):
        return
    if target.is_server:
        _guard(report, f"target {target.name} databases", functools.partial(_server_databases, target))
    server = facts[0]
    bin_dir = target.pg_bin_dir or ctx.config.tools.pg_bin_dir
    # The same choice a backup and a restore make: the lowest major >= the server's. A backup of
    # this target is read by the lowest pg_restore >= its pg_dump, which must suit the server too.
    chosen: dict[str, tools.Tool] = {}
    for name in TOOLS:
        use = "backup" if name != "pg_restore" else "restore into it"

        def find(name: str = name, use: str = use) -> str:
            tool = chosen[name] = tools.find_tool(name, server.major, bin_dir)
            return f"{use}: {name} {tool.version} ({tool.path}) for server major {server.major}"

        _guard(report, f"target {target.name} {name}", find)
    if "pg_dump" in chosen and "pg_restore" in chosen:

        def restorable() -> str:
            pg_restore = tools.find_tool("pg_restore", chosen["pg_dump"].major, bin_dir)
            tools.check_restore_into(pg_restore, server.major, chosen["pg_dump"].major)
            return (
                f"its backups (pg_dump {chosen['pg_dump'].version}) restore into it with pg_restore "
                f"{pg_restore.version} ({pg_restore.path})"
            )

        _guard(report, f"target {target.name} restore of its backups", restorable)


def _server_databases(target: TargetConfig) -> str:
    """Return which databases server target ``target`` selects now. Raises ConfigError (2) when none."""
    selection = databases.select(target.databases, target.exclude_databases, server_backup.discover(target))
    if not selection.databases:
        raise ConfigError(f"server target '{target.name}' selects no database")
    unmatched = "".join(f"; pattern '{p}' matches no database" for p in selection.unmatched)
    return f"backs up {len(selection.databases)} database(s): {', '.join(selection.databases)}{unmatched}"


def _check_control_database(config: Config) -> str:
    """Connect to the daemon's ledger database (``daemon.control_dsn``)."""
    pass

    assert config.daemon is not None and config.daemon.control_dsn
    control = TargetConfig(
        name="daemon control", dsn=config.daemon.control_dsn, password=config.daemon.control_password
    )
    with connection.connect(control) as conn:
        server = connection.server_facts(conn)
    return f"PostgreSQL {server.version} at {connection.describe(control)} as {server.user}"


def _check_storage(ctx: AppContext, name: str) -> str:
    ctx.storage(name).check_writable()
    return f"{ctx.storage_config(name).url}: wrote, read back and deleted a probe object"


def _check_immutability(ctx: AppContext, name: str, report: CheckReport) -> None:
    """Say whether the storage's bucket enforces retention, and FAIL when ``immutable`` is set on one that does not."""
    store = ctx.storage(name)
    if not isinstance(store, ObjectLocks):
        return
    check = f"storage {name} immutability"
    try:
        state = store.lock_state()
    except OpskitError as exc:
        report.add(check, FAIL, exc.one_line(), exc.exit_code)
        return
    configured = store.immutability
    if configured is None and "immutable" not in BACKENDS[ctx.storage_config(name).kind].options:
        report.add(check, OK, f"{state.detail} (the bucket's own setting: opskit sets no retention on {store.kind}://)")
    elif configured is None:
        report.add(check, OK, f"{state.detail}; opskit sets no retention (no 'immutable' option)")
    elif state.enabled:
        report.add(check, OK, f"{state.detail}; every backup object is locked ({configured.describe()})")
    elif state.enabled is None:
        report.add(check, WARN, f"{state.detail}; 'immutable' ({configured.describe()}) is set: a backup proves it")
    else:
        report.add(
            check,
            FAIL,
            f"{state.detail}, but 'immutable' is set: every backup to it would fail; enable Object Lock on "
            "the bucket or remove the option",
            ConfigError.exit_code,
        )


def _check_encryption(config: Config, report: CheckReport) -> None:
    encryption = config.encryption
    identity = encryption.identity
    if not encryption.recipients:
        if identity is not None:
            report.add("encryption", WARN, "an identity is configured but no recipients: backups are not encrypted")
        else:
            report.add("encryption", WARN, "backups are not encrypted (no [encryption] recipients)")
        return
    # A recipient that is not an age public key fails every backup, whether or not this host
    # holds an identity: checked on its own, before the identity question.
    if not _guard(report, "encryption recipients", functools.partial(_recipients_parse, config)):
        return
    if identity is None:
        report.add(
            "encryption",
            WARN,
            f"backups are encrypted to {len(encryption.recipients)} recipient(s) but no identity is configured "
            "here: this host cannot restore, verify contents or run drills",
        )
        return
    _guard(report, "encryption", functools.partial(_identity_matches, config))


def _recipients_parse(config: Config) -> str:
    """Return an OK detail when every configured recipient is an age public key; raise ConfigError naming a bad one."""
    recipients = config.encryption.recipients
    pipeline.parse_recipients(recipients)
    return f"{len(recipients)} valid age public key(s)"


def _identity_matches(config: Config) -> str:
    """Return an OK detail when the identity decrypts for a configured recipient; raise ConfigError if not."""
    pass

    encryption = config.encryption
    assert encryption.identity is not None
    pipeline.parse_recipients(encryption.recipients)
    identities = pipeline.parse_identities(encryption.identity.resolve())
    publics = {str(identity.to_public()) for identity in identities}
    matching = [r for r in encryption.recipients if r in publics]
    if not matching:
        shown = ", ".join(sorted(_short(p) for p in publics))
        raise ConfigError(
            f"the identity from {encryption.identity.describe()} (public key {shown}) matches none of the "
            f"{len(encryption.recipients)} configured recipient(s): backups could not be decrypted with it",
            hint="configure the identity that belongs to a recipient (age-keygen -y shows an identity's public key)",
        )
    unmatched = len(encryption.recipients) - len(matching)
    extra = f"; {unmatched} other recipient(s) are held elsewhere" if unmatched else ""
    return f"identity from {encryption.identity.describe()} decrypts for {_short(matching[0])}{extra}"


def _short(recipient: str) -> str:
    return f"{recipient[:12]}...{recipient[-6:]}" if len(recipient) > 24 else recipient
