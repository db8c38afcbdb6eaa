"""The line an interrupted run ends with says what it left: a runbook's earlier steps stay done.

Through the real process (``python -m opskit``) and a real SIGTERM, as a CronJob's deadline or
``docker stop`` sends it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.servers import REPO_ROOT


def _interrupt_runbook(tmp_path: Path, steps: str) -> tuple[int, str, str, Path]:
    """Run runbook ``book`` (``steps``: its [[steps]]) until its hanging step starts, then SIGTERM it.

    Returns (exit code, stdout, stderr, the transcript directory). The hanging step touches
    ``<tmp_path>/started`` first, so the signal arrives while it runs.
    """
    books, transcripts = tmp_path / "books", tmp_path / "transcripts"
    books.mkdir()
    (books / "book.toml").write_text('title = "book"\n' + steps)
    (tmp_path / "opskit.toml").write_text(f'[tools]\nstate_dir = "{tmp_path}/state"\n')
    argv = [sys.executable, "-m", "opskit", "--config", str(tmp_path / "opskit.toml"), "runbook", "run", "book"]
    run = subprocess.Popen(
        [*argv, "--dir", str(books), "--transcript-dir", str(transcripts)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        started = tmp_path / "started"
        deadline = time.monotonic() + 30
        while not started.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the hanging step never started"
        run.send_signal(signal.SIGTERM)
        stdout, stderr = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    return run.returncode, stdout, stderr, transcripts


def _hanging_step(tmp_path: Path) -> str:
    return f'[[steps]]\nkind = "shell"\nname = "Hangs"\nargv = ["/bin/sh", "-c", "touch {tmp_path}/started; exec sleep 120"]\n'


def test_an_interrupted_runbook_says_where_it_stopped_that_earlier_steps_stay_and_names_the_transcript(
    tmp_path: Path,
) -> None:
    done = tmp_path / "restored"
    steps = (
        f'[[steps]]\nkind = "shell"\nname = "Restore"\nargv = ["touch", "{done}"]\n'
        '[[steps]]\nkind = "note"\nname = "Tell"\ntext = "restored"\n'
        + _hanging_step(tmp_path)
        + '[[steps]]\nkind = "note"\nname = "Never reached"\ntext = "after"\n'
    )

    code, stdout, stderr, transcripts = _interrupt_runbook(tmp_path, steps)

    assert code == 130, stderr
    [transcript] = transcripts.glob("book-*.md")
    assert [line for line in stderr.splitlines() if line.startswith("opskit:")] == [
        "opskit: interrupted; runbook 'book' stopped at step 3 of 4 (Hangs); what steps 1-2 did stays done "
        f"(nothing is undone); transcript: {transcript}"
    ]
    assert "nothing was committed" not in stderr
    assert done.exists()  # what step 1 did is still there, as the line says
    assert f"transcript: {transcript}" in stdout.splitlines()


def test_a_runbook_interrupted_in_its_first_step_says_no_other_step_ran(tmp_path: Path) -> None:
    code, _stdout, stderr, transcripts = _interrupt_runbook(tmp_path, _hanging_step(tmp_path))

    assert code == 130, stderr
    [transcript] = transcripts.glob("book-*.md")
    assert [line for line in stderr.splitlines() if line.startswith("opskit:")] == [
        f"opskit: interrupted; runbook 'book' stopped at step 1 of 1 (Hangs), before any other step ran; "
        f"transcript: {transcript}"
    ]
