"""Examples shown at the end of the main verbs' ``--help`` (the command path -> example lines).

Kept in one table, attached when the group loads a command (:func:`attach`), so a verb module
stays about options and the examples are reviewed together. tests/cli/test_help_examples.py
runs every example's options through the verb's own parser, so an example cannot name an
option that does not exist.
"""

from __future__ import annotations

import click

EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "backup now": [
        ("Back up the only target", "opskit backup now"),
        ("Back up one target, labelled, and print the manifest", "opskit backup now -t app --label pre-release --json"),
        ("Back up every non-staging target (a cron line)", "opskit --quiet backup now --all"),
    ],
    "backup verify": [
        ("Check the newest backup's stored bytes and archive", "opskit backup verify latest --target app"),
        ("Check every backup of a target", "opskit backup verify --all --target app --json"),
    ],
    "restore": [
        ("Restore the newest backup into a new database beside the original", "opskit restore latest -t app"),
        (
            "Restore a backup over staging with 4 connections",
            "opskit restore 20260101T0300 -t app --to staging --clean -j 4",
        ),
        ("Replace the database in place, keeping the old one", "opskit restore latest -t app --replace --keep-old"),
    ],
    "drill restore": [
        ("Drill the newest backup into the target's staging", "opskit drill restore -t app"),
        ("Drill a random backup and keep the reports", "opskit drill restore -t app --random --report-dir ./drills"),
    ],
    "migrate": [
        ("Show what would run", "opskit migrate -t app --dry-run"),
        ("Back up, rehearse on staging, then apply", "opskit migrate -t app --backup-first --rehearse"),
    ],
    "prune": [
        ("See what retention would delete", "opskit prune --target app --dry-run"),
        ("Prune every target with a retention policy", "opskit prune --all --json"),
    ],
}


def render(examples: list[tuple[str, str]]) -> str:
    """Return the epilog text for ``examples``; ``\\b`` keeps click from rewrapping the lines."""
    lines = ["\b", "Examples:"]
    for description, example in examples:
        lines += [f"  # {description}", f"  {example}"]
    return "\n".join(lines)


def attach(command: click.Command, path: str | None = None) -> click.Command:
    """Set the epilog of ``command`` (and of its subcommands) from :data:`EXAMPLES`; return ``command``."""
    path = path or str(command.name)
    examples = EXAMPLES.get(path)
    if examples and not command.epilog:
        command.epilog = render(examples)
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            attach(sub, f"{path} {name}")
    return command
