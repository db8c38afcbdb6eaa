"""Which URL a ping goes to: the run's own check, in the convention of the service that URL names."""

from __future__ import annotations

import pytest

from opskit.config.load import parse_config
from opskit.config.notify import NotifySettings
from opskit.core.errors import ConfigError
from opskit.ops.notify import FAILURE, START, SUCCESS, Event, ping_refs, ping_request
from opskit.secrets.references import SecretRef

BASE = '[storages.local]\nurl = "file:///tmp/opskit-unit-never-written"\n[targets.app]\ndsn = "dbname=app"\n'


def event(kind: str, job: str = "", action: str = "backup", exit_code: int | None = None) -> Event:
    return Event(kind, job, action, "app", exit_code=exit_code)


def test_a_job_pings_its_own_url_before_its_verbs_and_every_run_pings_the_shared_list() -> None:
    settings = NotifySettings(
        pings=(SecretRef("https://hc-ping.com/all"),),
        ping_urls={"backup": SecretRef("https://hc-ping.com/b"), "nightly": SecretRef("https://hc-ping.com/n")},
    )
    refs = lambda e: [r.reference for r in ping_refs(e, settings)]  # noqa: E731
    assert refs(event(START, job="nightly")) == ["https://hc-ping.com/all", "https://hc-ping.com/n"]
    assert refs(event(START, job="hourly")) == ["https://hc-ping.com/all", "https://hc-ping.com/b"]
    assert refs(event(START, action="prune")) == ["https://hc-ping.com/all"]


def test_uptime_kuma_push_urls_get_a_status_at_the_end_and_nothing_at_the_start() -> None:
    base = "https://kuma.example/api/push/TOKEN?status=up&msg=OK&ping="
    assert ping_request(base, event(START)) is None
    up = ping_request(base, event(SUCCESS, exit_code=0))
    down = ping_request(base, event(FAILURE, exit_code=3))
    assert up is not None and down is not None
    assert up.startswith("https://kuma.example/api/push/TOKEN?ping=&status=up&msg=opskit+backup")
    assert "status=down" in down and "status=up" not in down


def test_cronitor_urls_get_state_and_exit_code() -> None:
    base = "https://cronitor.link/p/KEY/nightly"
    assert ping_request(base, event(START)) == base + "?state=run&message=opskit+backup+%28target+app%29+started"
    failed = ping_request(base, event(FAILURE, exit_code=4))
    assert failed is not None and "state=fail" in failed and "status_code=4" in failed


def test_ping_urls_is_a_table_of_urls_or_secret_references() -> None:
    config = parse_config(BASE + '[notify]\nping_urls = { backup = "env:HC", "nightly-prune" = "https://x/p" }\n')
    assert config.notify is not None
    assert {k: v.reference for k, v in config.notify.ping_urls.items()} == {
        "backup": "env:HC",
        "nightly-prune": "https://x/p",
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + '[notify]\nping_urls = { backup = "ftp://x" }\n')
    assert caught.value.problems[0].startswith("At 'notify.ping_urls.backup': must be an http(s):// URL")
