"""What a runbook is and what running it produced: plain records, no I/O.

A :class:`Runbook` comes from :mod:`opskit.runbooks.loader`; :mod:`opskit.runbooks.runbook`
runs it into a :class:`RunbookResult`, one :class:`StepResult` per step attempted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opskit.core.errors import RunbookFailed, VerificationFailed

# A step's status, as shown in the transcript.
OK, FAILED, SKIPPED, DRY_RUN = "ok", "failed", "skipped", "dry-run"

Confirm = Callable[[str], bool]
Echo = Callable[[str], None]


@dataclass(frozen=True)
class Variable:
    """A runbook variable: its default (None when required), what it means, and the ``pattern`` a value must match."""

    name: str
    default: str | None
    help: str = ""
    pattern: str | None = None


@dataclass(frozen=True)
class Step:
    """One step as written (strings not yet substituted)."""

    index: int
    kind: str
    name: str
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class Runbook:
    """A parsed runbook file."""

    name: str
    path: Path
    title: str
    description: str
    variables: tuple[Variable, ...]
    steps: tuple[Step, ...]


@dataclass
class StepResult:
    """What happened at one step."""

    step: Step
    status: str
    seconds: float = 0.0
    output: str = ""
    error: str = ""
    exit_code: int = 0
    rendered: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class RunbookResult:
    """A run of a runbook: every step attempted, and where the transcript is."""

    runbook: Runbook
    variables: dict[str, str]
    dry_run: bool
    results: list[StepResult] = field(default_factory=list)
    transcript: Path | None = None
    started: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Return True when no step failed."""
        return all(r.status != FAILED for r in self.results)

    @property
    def exit_code(self) -> int:
        """Return 0, or the failed step's code (an opskit step's own exit code; 5 for a failed check)."""
        failed = next((r for r in self.results if r.status == FAILED), None)
        return 0 if failed is None else (failed.exit_code or VerificationFailed.exit_code)

    def raise_for_outcome(self) -> None:
        """Raise RunbookFailed (with the failed step's exit code) when a step failed."""
        failed = next((r for r in self.results if r.status == FAILED), None)
        if failed is not None:
            raise RunbookFailed(
                f"runbook '{self.runbook.name}' stopped at step {failed.step.index} ({failed.step.name}): "
                f"{failed.error}",
                hint=f"see the transcript {self.transcript}" if self.transcript else None,
                exit_code=self.exit_code,
            )
