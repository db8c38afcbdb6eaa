"""Secret values, references, OPSKIT_* environment overrides and the cloud resolvers at the SDK boundary."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from opskit.config.load import parse_config
from opskit.config.schema import secret_env_name
from opskit.core.errors import ConfigError, MissingExtraError, UnreachableError
from opskit.pg import commands, connection
from opskit.secrets import managers, references
from opskit.secrets.references import Secret, SecretRef

VALUE = "s3cr3t-Value-that-must-not-leak"


@pytest.fixture(autouse=True)
def fresh_caches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    references.clear_cache()
    managers.forget_clients()
    for name in list(os.environ):
        if name.startswith("OPSKIT_"):
            monkeypatch.delenv(name)
    yield
    references.clear_cache()
    managers.forget_clients()


def config_with_password(password: str | None = None) -> str:
    line = f'password = "{password}"\n' if password is not None else ""
    return f'[targets.app]\ndsn = "host=db dbname=app"\n{line}'


# --------------------------------------------------------------------------- Secret and SecretRef


def test_secret_str_and_repr_never_show_the_value() -> None:
    secret = Secret(VALUE, reference="env:DB_PASSWORD")
    assert VALUE not in str(secret)
    assert VALUE not in repr(secret)
    assert VALUE not in f"{secret} {secret!r} {[secret]} { ({'k': secret}) }"
    assert "env:DB_PASSWORD" in repr(secret)
    assert secret.reveal() == VALUE


def test_env_reference_resolves_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_DB_PASSWORD", VALUE)
    ref = SecretRef("env:APP_DB_PASSWORD")
    assert ref.scheme == "env"
    assert not ref.is_literal
    assert ref.resolve().reveal() == VALUE
    assert str(ref) == "env:APP_DB_PASSWORD"


def test_a_missing_env_variable_is_unreachable_and_names_the_variable() -> None:
    with pytest.raises(UnreachableError, match="env:NOT_SET_ANYWHERE"):
        SecretRef("env:NOT_SET_ANYWHERE").resolve()


def test_file_reference_strips_the_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(VALUE + "\n")
    assert SecretRef(f"file:{path}").resolve().reveal() == VALUE


def test_a_secret_is_resolved_once_per_process(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("first")
    ref = SecretRef(f"file:{path}")
    assert ref.resolve().reveal() == "first"
    path.write_text("second")
    assert ref.resolve().reveal() == "first"
    references.clear_cache()
    assert ref.resolve().reveal() == "second"


def test_an_unreadable_file_reference_is_unreachable(tmp_path: Path) -> None:
    with pytest.raises(UnreachableError, match="cannot be read"):
        SecretRef(f"file:{tmp_path / 'absent'}").resolve()


def test_a_literal_is_flagged_and_described_without_its_value() -> None:
    ref = SecretRef(VALUE)
    assert ref.is_literal
    assert VALUE not in ref.describe()
    assert VALUE not in repr(ref)


# --------------------------------------------------------------------------- OPSKIT_<KEY> environment


def test_env_names_follow_the_config_path() -> None:
    assert secret_env_name("targets.app.password") == "OPSKIT_TARGETS_APP_PASSWORD"
    assert secret_env_name("targets.app-db.password") == "OPSKIT_TARGETS_APP_DB_PASSWORD"
    assert secret_env_name("storages.s3.secret_access_key") == "OPSKIT_STORAGES_S3_SECRET_ACCESS_KEY"
    assert secret_env_name("encryption.identity") == "OPSKIT_ENCRYPTION_IDENTITY"


def test_opskit_variable_supplies_a_secret_missing_from_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSKIT_TARGETS_APP_PASSWORD", VALUE)
    config = parse_config(config_with_password())
    ref = config.targets["app"].password
    assert ref is not None
    assert ref.reference == "env:OPSKIT_TARGETS_APP_PASSWORD"
    assert ref.resolve().reveal() == VALUE


def test_opskit_variable_overrides_the_files_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSKIT_TARGETS_APP_PASSWORD", VALUE)
    ref = parse_config(config_with_password("env:SOMETHING_ELSE")).targets["app"].password
    assert ref is not None and ref.reference == "env:OPSKIT_TARGETS_APP_PASSWORD"


def test_opskit_file_variable_reads_the_named_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "db_password"
    path.write_text(VALUE + "\n")
    monkeypatch.setenv("OPSKIT_TARGETS_APP_PASSWORD_FILE", str(path))
    ref = parse_config(config_with_password()).targets["app"].password
    assert ref is not None and ref.reference == f"file:{path}"
    assert ref.resolve().reveal() == VALUE


def test_both_opskit_variables_set_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSKIT_TARGETS_APP_PASSWORD", VALUE)
    monkeypatch.setenv("OPSKIT_TARGETS_APP_PASSWORD_FILE", "/run/secrets/db")
    with pytest.raises(ConfigError) as caught:
        parse_config(config_with_password())
    assert "At 'targets.app.password'" in caught.value.message
    assert "OPSKIT_TARGETS_APP_PASSWORD_FILE" in caught.value.message
    assert VALUE not in caught.value.message


def test_a_storage_secret_can_come_only_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSKIT_STORAGES_OFFSITE_SECRET_ACCESS_KEY_FILE", "/run/secrets/s3")
    config = parse_config('[storages.offsite]\nurl = "s3://bucket/prefix"\n')
    assert config.storages["offsite"].options["secret_access_key"] == SecretRef("file:/run/secrets/s3")


@pytest.mark.parametrize(
    "reference",
    [
        "env:",
        "file:",
        "aws-sm://",
        "aws-sm://name#",
        "aws-sm://arn:aws:s3:::bucket",
        "gcp-sm://projects/p",
        "gcp-sm://projects/p/secrets//versions/1",
        "azure-kv://vault-only",
        "azure-kv://v/s/1/extra",
    ],
)
def test_a_malformed_reference_is_a_config_error_at_load_time(reference: str) -> None:
    with pytest.raises(ConfigError, match=r"At 'targets\.app\.password'"):
        parse_config(config_with_password(reference))


# --------------------------------------------------------------------------- parsing cloud references


def test_aws_reference_takes_the_region_from_an_arn() -> None:
    ref = managers.parse("aws-sm://arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf#password")
    assert ref.location == "eu-west-1"
    assert ref.name == "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf"
    assert ref.json_key == "password"


def test_gcp_reference_defaults_to_the_latest_version() -> None:
    ref = managers.parse("gcp-sm://projects/p1/secrets/db")
    assert ref.name == "projects/p1/secrets/db/versions/latest"


def test_azure_reference_builds_the_public_vault_url_from_a_bare_name() -> None:
    assert managers.parse("azure-kv://myvault/db-pw").location == "https://myvault.vault.azure.net/"
    sovereign = managers.parse("azure-kv://myvault.vault.azure.cn/db-pw/abc123")
    assert sovereign.location == "https://myvault.vault.azure.cn/"
    assert sovereign.version == "abc123"


# --------------------------------------------------------------------------- fake SDK clients


class FakeGcpClient:
    def __init__(self, store: dict[str, bytes]) -> None:
        self.store = store
        self.requests: list[Any] = []

    def access_secret_version(self, request: dict[str, str]) -> Any:
        self.requests.append(request)
        name = request["name"]
        if name not in self.store:
            raise LookupError(f"404 Secret [{name}] not found or has no versions.")
        return SimpleNamespace(payload=SimpleNamespace(data=self.store[name]))


class FakeAzureClient:
    def __init__(self, store: dict[str, str]) -> None:
        self.store = store
        self.calls: list[tuple[str, str | None]] = []

    def get_secret(self, name: str, version: str | None = None) -> Any:
        self.calls.append((name, version))
        if name not in self.store:
            raise PermissionError("(Forbidden) The user does not have secrets get permission")
        return SimpleNamespace(value=self.store[name])


@pytest.fixture
def fake_gcp(monkeypatch: pytest.MonkeyPatch) -> FakeGcpClient:
    client = FakeGcpClient({"projects/p1/secrets/db/versions/latest": VALUE.encode()})
    monkeypatch.setitem(managers.CLIENT_FACTORIES, "gcp-sm", lambda ref: client)
    return client


@pytest.fixture
def fake_azure(monkeypatch: pytest.MonkeyPatch) -> FakeAzureClient:
    client = FakeAzureClient({"db-pw": VALUE, "json": '{"user": "app", "password": "' + VALUE + '"}'})
    monkeypatch.setitem(managers.CLIENT_FACTORIES, "azure-kv", lambda ref: client)
    return client


def test_gcp_reference_resolves_through_the_sdk_client(fake_gcp: FakeGcpClient) -> None:
    secret = SecretRef("gcp-sm://projects/p1/secrets/db").resolve()
    assert secret.reveal() == VALUE
    assert fake_gcp.requests == [{"name": "projects/p1/secrets/db/versions/latest"}]


def test_gcp_failure_is_unreachable_and_names_the_reference(fake_gcp: FakeGcpClient) -> None:
    with pytest.raises(UnreachableError) as caught:
        SecretRef("gcp-sm://projects/p1/secrets/other/versions/3").resolve()
    assert "gcp-sm://projects/p1/secrets/other/versions/3" in caught.value.message
    assert "secretAccessor" in (caught.value.hint or "")


def test_azure_reference_resolves_a_version_and_a_json_field(fake_azure: FakeAzureClient) -> None:
    assert SecretRef("azure-kv://vault/db-pw/v7").resolve().reveal() == VALUE
    assert SecretRef("azure-kv://vault/json#password").resolve().reveal() == VALUE
    assert fake_azure.calls == [("db-pw", "v7"), ("json", None)]


def test_azure_failure_is_unreachable_and_never_quotes_a_value(fake_azure: FakeAzureClient) -> None:
    with pytest.raises(UnreachableError, match="azure-kv://vault/absent"):
        SecretRef("azure-kv://vault/absent").resolve()
    with pytest.raises(UnreachableError) as caught:
        SecretRef("azure-kv://vault/json#nope").resolve()
    assert "fields: password, user" in caught.value.message
    assert VALUE not in caught.value.one_line()
    with pytest.raises(UnreachableError) as not_json:
        SecretRef("azure-kv://vault/db-pw#password").resolve()
    assert VALUE not in not_json.value.one_line()


@pytest.mark.parametrize(
    ("reference", "module", "extra"),
    [
        ("aws-sm://db", "boto3", "aws-secrets"),
        ("gcp-sm://projects/p/secrets/s", "google.cloud.secretmanager", "gcp-secrets"),
        ("azure-kv://vault/name", "azure.keyvault.secrets", "azure-secrets"),
    ],
)
def test_a_missing_sdk_is_a_missing_extra_error_with_the_install_line(
    monkeypatch: pytest.MonkeyPatch, reference: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(MissingExtraError) as caught:
        SecretRef(reference).resolve()
    assert f"pip install 'opskit[{extra}]'" in caught.value.message
    assert caught.value.exit_code == 2


# --------------------------------------------------------------------------- passwords for client tools


def test_client_conninfo_drops_the_password_and_keeps_tls_settings() -> None:
    pass
    from opskit.config.model import TargetConfig

    target = TargetConfig(
        name="app",
        dsn=f"host=db user=app password={VALUE} dbname=app sslmode=verify-full "
        "sslrootcert=/etc/ca.pem sslcert=/etc/client.pem sslkey=/etc/client.key",
    )
    info = connection.conninfo(target)
    assert VALUE not in info and "password" not in info
    for setting in (
        "sslmode=verify-full",
        "sslrootcert=/etc/ca.pem",
        "sslcert=/etc/client.pem",
        "sslkey=/etc/client.key",
    ):
        assert setting in info
    assert VALUE not in commands.dbname_arg(target)


def test_password_file_is_0600_escaped_and_removed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pass
    from opskit.config.model import TargetConfig

    monkeypatch.setenv("OPSKIT_T_DB_PW", "pa:ss\\word")
    target = TargetConfig(name="app", dsn="host=db dbname=app", password=SecretRef("env:OPSKIT_T_DB_PW"))
    with connection.password_env(target, tmp_path) as env:
        path = Path(env["PGPASSFILE"])
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.read_text() == "*:*:*:*:pa\\:ss\\\\word\n"
    assert not path.exists()


def test_children_never_inherit_secret_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from opskit.core.execute import child_env

    monkeypatch.setenv("OPSKIT_TARGETS_APP_PASSWORD", VALUE)
    monkeypatch.setenv("PGPASSWORD", VALUE)
    monkeypatch.setenv("INNOCENT_LOOKING", "plain value")
    monkeypatch.setenv("APP_DB", "also-" + VALUE)
    SecretRef("env:APP_DB").resolve()
    env = child_env({"PGPASSFILE": "/tmp/x"})
    assert "OPSKIT_TARGETS_APP_PASSWORD" not in env
    assert "PGPASSWORD" not in env
    assert "APP_DB" not in env  # its value is a resolved secret
    assert env["INNOCENT_LOOKING"] == "plain value"
    assert env["PGPASSFILE"] == "/tmp/x"
