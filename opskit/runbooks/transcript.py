"""The Markdown transcript of a runbook run: variables, then each step with status, timing and output."""

from __future__ import annotations

from pathlib import Path

from opskit.context import AppContext
from opskit.runbooks.model import DRY_RUN, RunbookResult
from opskit.runbooks.steps import describe


def write_transcript(ctx: AppContext, result: RunbookResult, directory: str | Path | None) -> Path:
    """Write the transcript to ``directory`` (default ``<state_dir>/runbooks/``) and return its path."""
    folder = Path(directory) if directory else ctx.state_dir / "runbooks"
    folder.mkdir(parents=True, exist_ok=True)
    run_id = result.variables.get("run_id", "run")
    path = folder / f"{result.runbook.name}-{run_id}.md"
    path.write_text(render_transcript(result), encoding="utf-8")
    return path


def render_transcript(result: RunbookResult) -> str:
    """Return the Markdown transcript of a run: variables, then each step with status, timing and output."""
    book = result.runbook
    verdict = "DRY RUN" if result.dry_run else ("OK" if result.ok else "FAILED")
    lines = [
        f"# Runbook {book.name}: {book.title}",
        "",
        f"- Started {result.started}; {result.seconds:.1f} s in total; result **{verdict}**",
        f"- Steps run: {len(result.results)} of {len(book.steps)}",
        "",
        "## Variables",
        "",
    ]
    lines += [f"- `{k}` = `{v}`" for k, v in sorted(result.variables.items())]
    lines += ["", "## Steps", ""]
    for item in result.results:
        lines.append(f"### {item.step.index}. {item.step.name} ({item.step.kind}): {item.status}, {item.seconds:.1f} s")
        lines.append("")
        # A dry run's output already is the description; a note has none.
        if item.rendered and item.status != DRY_RUN:
            description = describe(item.step, item.rendered, prefix="")
            if description:
                lines += [description.capitalize(), ""]
        if item.error:
            lines += [f"Error: {item.error}", ""]
        if item.output:
            lines += ["```", item.output, "```", ""]
    skipped = book.steps[len(result.results) :]
    if skipped:
        lines += ["## Not run", ""] + [f"- {s.index}. {s.name} ({s.kind})" for s in skipped] + [""]
    return "\n".join(lines)
