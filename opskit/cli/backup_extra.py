"""``opskit backup pin|unpin|verify``: added to the ``backup`` group by ``register_backup_commands``."""

from __future__ import annotations

import click

from opskit.cli.render import echo_json
from opskit.context import AppContext


def register_backup_commands(backup_group: click.Group) -> None:
    """Add ``pin``, ``unpin`` and ``verify`` to the ``opskit backup`` group."""
    from opskit.cli import pass_app

    @backup_group.command("pin")
    @click.argument("backup_id")
    @click.option("--target", "-t", default=None, help="The backup's target (default: the default target).")
    @click.option("--storage", default=None, help="Only in this storage (default: every storage holding it).")
    @click.option("--note", default=None, help="Why it is pinned; stored in the pin marker.")
    @pass_app
    def pin(app: AppContext, backup_id: str, target: str | None, storage: str | None, note: str | None) -> None:
        """Keep BACKUP_ID (an id, a unique prefix, or 'latest') whatever retention says."""
        from opskit.backup.pin import pin as pin_backup

        result = pin_backup(app, backup_id, target=target, storage=storage, note=note)
        where = ", ".join(result.storages)
        state = "pinned" if result.changed else "already pinned"
        click.echo(f"backup {result.backup_id} of '{result.target}' {state} in {where}")

    @backup_group.command("unpin")
    @click.argument("backup_id")
    @click.option("--target", "-t", default=None, help="The backup's target (default: the default target).")
    @click.option("--storage", default=None, help="Only in this storage (default: every storage holding it).")
    @pass_app
    def unpin(app: AppContext, backup_id: str, target: str | None, storage: str | None) -> None:
        """Let retention decide about BACKUP_ID again."""
        from opskit.backup.pin import unpin as unpin_backup

        result = unpin_backup(app, backup_id, target=target, storage=storage)
        if result.changed:
            click.echo(f"backup {result.backup_id} of '{result.target}' unpinned in {', '.join(result.changed)}")
        else:
            click.echo(f"backup {result.backup_id} of '{result.target}' was not pinned")

    @backup_group.command("verify")
    @click.argument("backup_id", required=False)
    @click.option("--all", "all_backups", is_flag=True, help="Verify every backup of the target.")
    @click.option("--target", "-t", default=None, help="The backup's target (default: the default target).")
    @click.option("--storage", default=None, help="The storage to read (default: the target's first).")
    @click.option("--json", "as_json", is_flag=True, help="Print the verification records as JSON.")
    @pass_app
    def verify(
        app: AppContext,
        backup_id: str | None,
        all_backups: bool,
        target: str | None,
        storage: str | None,
        as_json: bool,
    ) -> None:
        """Check BACKUP_ID (an id, a prefix, or 'latest'), or --all, against its manifest.

        Streams every artifact and checks its size and sha256 (no key needed); with the
        age identity configured (or for unencrypted backups) also decrypts, decompresses,
        checks the plain sha256 and lists the archive with pg_restore. Records the result
        next to the manifest. Exits 5 naming the artifact and check that failed; exits 4,
        recording nothing, when the configured identity fits none of a backup's recipients.
        """
        from opskit import actions
        from opskit.restore import verify as action

        if bool(backup_id) == all_backups:
            raise click.UsageError("give a backup id (or 'latest') or --all")
        try:
            report = actions.call(
                "verify", app, selector=backup_id, all_backups=all_backups, target=target, storage=storage
            )
        except action.VerifyFailed as exc:
            _render_verify(exc.report, as_json)
            raise
        _render_verify(report, as_json)


def _render_verify(report: object, as_json: bool) -> None:
    from opskit.restore.verify import VerifyReport

    assert isinstance(report, VerifyReport)
    if as_json:
        echo_json(report.to_dict())
        return
    for verification in report.verifications:
        click.echo(
            f"backup {verification.backup_id} in {verification.storage}: {verification.verdict.upper()} "
            f"({verification.level}, {len(verification.checks)} checks)"
        )
        for check in verification.checks:
            if not check.ok:
                click.echo(f"  {check.subject}: {check.name} failed: expected {check.expected}, got {check.actual}")
