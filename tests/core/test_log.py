"""The log line schema (docs/logging.md): logger, message, one duration name; NO_COLOR; --quiet."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from opskit.core.log import colours_wanted, configure_logging, get_logger


class Terminal:
    def isatty(self) -> bool:
        return True


def json_lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_a_json_line_names_its_logger_and_carries_a_message_field(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json_logs=True)
    get_logger("opskit.backup.backup").info("backup committed", target="app", duration_seconds=1.5)
    (line,) = json_lines(capsys.readouterr().err)
    assert line["logger"] == "opskit.backup.backup"
    assert line["message"] == line["event"] == "backup committed"
    assert line["level"] == "info" and line["duration_seconds"] == 1.5 and "timestamp" in line


def test_quiet_keeps_warnings_and_drops_info(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json_logs=True, quiet=True)
    log = get_logger("opskit.test")
    log.info("routine")
    log.warning("attention")
    assert [line["event"] for line in json_lines(capsys.readouterr().err)] == ["attention"]
    configure_logging(json_logs=True)


def test_no_color_turns_colours_off_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert colours_wanted(Terminal())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not colours_wanted(Terminal())
    monkeypatch.setenv("NO_COLOR", "")  # https://no-color.org: only a non-empty value counts
    assert colours_wanted(Terminal())


def test_log_calls_name_durations_duration_seconds_only() -> None:
    import re

    from tests.servers import REPO_ROOT

    offenders = []
    for path in sorted((REPO_ROOT / "opskit").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"^\s+seconds=round\(", line):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}")
    assert not offenders, f"log fields named 'seconds' (use duration_seconds): {offenders}"


def test_a_librarys_warning_is_a_json_line_too_with_its_secrets_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = io.StringIO()  # the handler binds the stderr of the moment: this one, not pytest's capture
    monkeypatch.setattr(sys, "stderr", stderr)
    logging.getLogger("google").propagate = False  # as google-auth leaves it, used before configure_logging
    configure_logging(json_logs=True)
    try:
        logging.getLogger("google.auth._default").warning("No project ID could be determined; password=hunter2")
    finally:
        monkeypatch.undo()
        configure_logging(json_logs=True)  # bound to the real stderr again; one handler only
    err = stderr.getvalue()
    (line,) = json_lines(err) or [err]
    assert isinstance(line, dict), err
    assert err.count("\n") == 1 and not err.startswith("WARNING:")
    assert line["logger"] == "google.auth._default" and line["level"] == "warning"
    assert "hunter2" not in line["message"]  # type: ignore[operator]
    assert [h.get_name() for h in logging.getLogger().handlers].count("opskit-library-records") == 1
