"""The log redaction processor and redact_text keep secrets out of every rendered line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from opskit.core.log import configure_logging, get_logger, redact_processor
from opskit.core.redaction import REDACTED, redact_text
from opskit.secrets import references
from opskit.secrets.references import Secret, SecretRef

PW = "Tr0ub4dor&3-horse"


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    references.clear_cache()
    yield
    references.clear_cache()
    structlog.reset_defaults()


def redact(**fields: object) -> dict[str, object]:
    return dict(redact_processor(None, "info", dict(fields)))


@pytest.mark.parametrize(
    "text",
    [
        f"postgresql://app:{PW}@db.example.com:5432/app",
        f"postgres://app:{PW}@db/app?sslmode=require",
        f"cannot reach postgresql://app:{PW}@db/app now",
        f"s3://AKIA:{PW}@bucket/prefix",
        f"postgresql://app:p@{PW}@db/app",  # an unencoded '@' inside the password
    ],
)
def test_passwords_inside_urls_are_redacted(text: str) -> None:
    result = redact_text(text)
    assert PW not in result
    assert REDACTED in result


def test_url_redaction_keeps_user_host_and_database() -> None:
    assert redact_text(f"postgresql://app:{PW}@db:5432/app") == f"postgresql://app:{REDACTED}@db:5432/app"


def test_a_url_without_a_password_is_untouched() -> None:
    text = "postgresql://app@db:5432/app and https://example.com:8443/path"
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        f"host=db user=app password={PW} dbname=app",
        f"host=db password = '{PW} with spaces' dbname=app",
        f"PGPASSWORD={PW} pg_dump",
        f"sslpassword={PW}",
        f"aws_secret_access_key={PW}",
        f"https://acct.blob.core.windows.net/c?sv=2024&sig={PW}",
    ],
)
def test_key_value_passwords_are_redacted(text: str) -> None:
    assert PW not in redact_text(text)


def test_libpq_dsn_keeps_its_other_settings() -> None:
    result = redact_text(f"host=db user=app password={PW} dbname=app sslmode=verify-full")
    assert result == f"host=db user=app password={REDACTED} dbname=app sslmode=verify-full"


def test_a_resolved_secret_quoted_verbatim_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSKIT_T_PW", PW)
    SecretRef("env:OPSKIT_T_PW").resolve()
    assert redact_text(f"server said: bad token {PW}!") == f"server said: bad token {REDACTED}!"


@pytest.mark.parametrize(
    "key",
    ["password", "db_password", "secret_access_key", "token", "api_key", "private_key", "identity", "sas_token"],
)
def test_secret_looking_keys_are_redacted(key: str) -> None:
    assert redact(**{key: PW})[key] == REDACTED


def test_a_reference_under_a_secret_key_stays_readable() -> None:
    assert redact(password="env:DB_PASSWORD")["password"] == "env:DB_PASSWORD"
    assert redact(password="aws-sm://prod/db#password")["password"] == "aws-sm://prod/db#password"


def test_secret_and_secretref_values_render_without_the_value() -> None:
    result = redact(secret=Secret(PW, "file:/run/secrets/db"), ref=SecretRef(PW))
    assert PW not in json.dumps(result)


def test_nested_dicts_and_lists_are_redacted() -> None:
    result = redact(
        config={
            "targets": {"app": {"dsn": f"postgresql://u:{PW}@h/db", "password": PW}},
            "storages": [{"url": "s3://b", "options": {"secret_access_key": PW}}],
        },
        argv=["pg_dump", f"--dbname=host=h password={PW}"],
        tokens=[PW, PW],
    )
    assert PW not in json.dumps(result)
    assert result["config"]["targets"]["app"]["dsn"] == f"postgresql://u:{REDACTED}@h/db"  # type: ignore[index]


def test_non_secret_fields_pass_through_unchanged() -> None:
    result = redact(event="backup done", target="app", size=123, ok=True, storages=["s3", "local"])
    assert result == {"event": "backup done", "target": "app", "size": 123, "ok": True, "storages": ["s3", "local"]}


@pytest.mark.parametrize("json_logs", [True, False])
def test_rendered_log_lines_and_tracebacks_never_show_a_password(
    json_logs: bool, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    configure_logging(debug=True, json_logs=json_logs)
    log = get_logger("test")
    log.info("connecting", dsn=f"postgresql://app:{PW}@db/app", password=PW, secret=Secret(PW))
    log.debug(f"argv pg_dump --dbname='host=db password={PW}'")
    try:
        raise RuntimeError(f"connection to postgresql://app:{PW}@db/app failed")
    except RuntimeError:
        log.exception("failed")
    err = capsys.readouterr().err
    assert "connecting" in err and "failed" in err and "RuntimeError" in err
    assert PW not in err
