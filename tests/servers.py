"""Real storage servers for tests, as pytest fixtures (loaded by ``tests/conftest.py``).

Each server is a subprocess on a free loopback port, started the first time a test asks
for it (session scope) and stopped at the end of the session:

- ``s3_server``: ``moto_server``; ``s3_bucket`` makes a fresh bucket and yields a
  ready :class:`StorageConfig` (``s3://<bucket>/backups``).
- ``gcs_server``: ``gcp-storage-emulator --in-memory``; ``gcs_bucket`` likewise.
- ``azurite_server``: Azurite's blob service from npm; ``azure_container`` likewise.
- ``local_storage``: a ``file://`` storage in a temporary directory.
- ``any_storage``: parametrized over the four, for the storage contract suite.

Helpers derive broken configs from a good one (:func:`missing_container`,
:func:`bad_credentials`) and route a config through a :class:`~tests.faultproxy.FaultProxy`
(:func:`through_proxy`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from opskit.secrets.references import SecretRef
from opskit.storage.base import StorageConfig

REPO_ROOT = Path(__file__).resolve().parent.parent

# Fake credentials for moto: it accepts any, but boto3 refuses to sign without some.
S3_ACCESS_KEY = "testing"
S3_SECRET_KEY = "testing"
S3_REGION = "us-east-1"

# Azurite's well-known development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

# Parts this small are accepted by the test servers (moto is started with a lower
# minimum); they let a test cross several part boundaries with a few hundred KiB.
SMALL_PART_SIZE = 256 * 1024


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_name(prefix: str) -> str:
    """Return a bucket/container name unique across concurrent test runs (lowercase, DNS-safe)."""
    return f"{prefix}-{secrets.token_hex(6)}"


@dataclass
class ServerProcess:
    """A test server subprocess, its base URL, and its log file."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    kill_after: float = 5.0

    def stop(self) -> None:
        """Terminate the server; kill it when it does not exit within ``kill_after`` seconds."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=self.kill_after)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        """Return the last lines of the server's output, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_server(
    name: str,
    argv: list[str],
    port: int,
    ready_path: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    kill_after: float = 5.0,
    timeout: float = 60.0,
) -> ServerProcess:
    """Start ``argv`` and wait until ``GET http://127.0.0.1:port{ready_path}`` answers (any status).

    Raises RuntimeError with the server's output when it exits or does not answer in time.
    """
    log_path = log_dir / f"{name}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - owned by the child process until it exits
    process = subprocess.Popen(
        argv, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=log_dir
    )
    log_file.close()
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(name, url, process, log_path, kill_after)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(url + ready_path, timeout=2):
                return server
        except urllib.error.HTTPError:
            return server  # it answered: an error status still means it is up
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{name} did not answer on {url} within {timeout:.0f}s:\n{server.log_tail()}")


# --------------------------------------------------------------------------- S3 (moto)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield the endpoint URL of a moto S3 server for this session."""
    port = free_port()
    server = start_server(
        "moto",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        port,
        "/moto-api/data.json",
        tmp_path_factory.mktemp("moto"),
        env={"S3_UPLOAD_PART_MIN_SIZE": str(SMALL_PART_SIZE), "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
    )
    try:
        yield server.url
    finally:
        server.stop()


@dataclass(frozen=True)
class S3AuthServer:
    """A moto server that checks credentials, with a bucket and a read-only user's key."""

    url: str
    bucket: str
    read_only_key: str
    read_only_secret: str


@pytest.fixture(scope="session")
def s3_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3AuthServer]:
    """Yield a moto server with IAM checks on, a bucket, and a user who may only read and list.

    moto lets the first INITIAL_NO_AUTH_ACTION_COUNT requests through unauthenticated: exactly
    the four set-up calls below. Every later request needs a known key with a valid signature.
    """
    import boto3

    port = free_port()
    server = start_server(
        "moto-auth",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        port,
        "/moto-api/data.json",
        tmp_path_factory.mktemp("moto-auth"),
        env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"},
    )
    try:
        setup: dict[str, Any] = {
            "endpoint_url": server.url,
            "region_name": S3_REGION,
            "aws_access_key_id": S3_ACCESS_KEY,
            "aws_secret_access_key": S3_SECRET_KEY,
        }
        bucket = unique_name("opskit-t-auth")
        boto3.client("s3", **setup).create_bucket(Bucket=bucket)
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="reader")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}],
        }
        iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        yield S3AuthServer(server.url, bucket, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        server.stop()


def s3_client(endpoint_url: str) -> object:
    """Return a boto3 client for the test server (fake credentials, no retries)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=S3_REGION,
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
    )


@pytest.fixture
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[StorageConfig]:
    """Yield a StorageConfig for a fresh bucket on the moto server (``s3://<bucket>/backups``).

    The fake credentials are in the config and, for subprocesses such as the opskit CLI,
    in the environment (restored after the test).
    """
    for name, value in (
        ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
        ("AWS_DEFAULT_REGION", S3_REGION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = unique_name("opskit-t")
    s3_client(s3_server).create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    yield StorageConfig(
        name="s3",
        url=f"s3://{bucket}/backups",
        options={
            "endpoint_url": s3_server,
            "region": S3_REGION,
            "access_key_id": SecretRef(S3_ACCESS_KEY),
            "secret_access_key": SecretRef(S3_SECRET_KEY),
        },
    )


# --------------------------------------------------------------------------- GCS (gcp-storage-emulator)


# The emulator re-serializes its whole metadata (every object of every bucket) as JSON on
# each write, even in memory where nobody reads it back: writes get slower as a session's
# tests add objects, and 1,001 objects take half a minute. In memory the file is never
# read after start-up, so the launcher skips writing it; everything else is the real CLI.
_GCS_LAUNCHER = (
    "import sys\n"
    "import gcp_storage_emulator.storage as storage\n"
    "from gcp_storage_emulator.__main__ import main\n"
    "storage.Storage._write_config_to_file = lambda self: None\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield the base URL of a gcp-storage-emulator (in memory) for this session."""
    port = free_port()
    server = start_server(
        "gcs",
        [
            sys.executable,
            "-c",
            _GCS_LAUNCHER,
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--in-memory",
            "-q",
        ],
        port,
        "/storage/v1/b",
        tmp_path_factory.mktemp("gcs"),
    )
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def gcs_bucket(gcs_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[StorageConfig]:
    """Yield a StorageConfig for a fresh bucket on the GCS emulator (``gs://<bucket>/backups``)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    bucket = unique_name("opskit-t")
    request = urllib.request.Request(
        f"{gcs_server}/storage/v1/b?project=test",
        data=f'{{"name": "{bucket}"}}'.encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):
        pass
    yield StorageConfig(name="gcs", url=f"gs://{bucket}/backups", options={"endpoint_url": gcs_server})


# --------------------------------------------------------------------------- Azure (Azurite)


def azurite_binary() -> str | None:
    """Return the azurite-blob executable: the one the Makefile installs under .tools, else PATH."""
    local = REPO_ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    return shutil.which("azurite-blob")


def azurite_connection_string(blob_endpoint: str) -> str:
    """Return the development account's connection string for a blob endpoint URL."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={blob_endpoint}/{AZURITE_ACCOUNT};"
    )


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield the base URL (``http://127.0.0.1:PORT``) of an in-memory Azurite blob service."""
    binary = azurite_binary()
    if binary is None:
        pytest.skip("azurite-blob is not installed (make test installs it under .tools/azurite)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("azurite")
    server = start_server(
        "azurite",
        [
            binary,
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
        ],
        port,
        "/",
        workdir,
        kill_after=2.0,  # Azurite shuts down slowly; its state is in memory anyway
    )
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def azure_container(azurite_server: str) -> Iterator[StorageConfig]:
    """Yield a StorageConfig for a fresh container on Azurite (``az://<container>/backups``)."""
    from azure.storage.blob import BlobServiceClient

    connection_string = azurite_connection_string(azurite_server)
    container = unique_name("opskit-t")
    BlobServiceClient.from_connection_string(connection_string).create_container(container)
    yield StorageConfig(
        name="azure",
        url=f"az://{container}/backups",
        options={"connection_string": SecretRef(connection_string)},
    )


# --------------------------------------------------------------------------- local disk and all four


@pytest.fixture
def local_storage(tmp_path: Path) -> StorageConfig:
    """Return a StorageConfig for a ``file://`` storage in a fresh temporary directory."""
    return StorageConfig(name="local", url=f"file://{tmp_path / 'backups'}")


STORAGE_FIXTURES = {"file": "local_storage", "s3": "s3_bucket", "gs": "gcs_bucket", "az": "azure_container"}


@pytest.fixture(params=list(STORAGE_FIXTURES))
def any_storage(request: pytest.FixtureRequest) -> StorageConfig:
    """Return a ready StorageConfig of each kind in turn: file, s3, gs, az."""
    config: StorageConfig = request.getfixturevalue(STORAGE_FIXTURES[request.param])
    return config


# --------------------------------------------------------------------------- derived configs


def missing_container(config: StorageConfig) -> StorageConfig:
    """Return ``config`` pointed at a bucket/container (or directory) that does not exist."""
    if config.kind == "file":
        # A path below a regular file can never be created, whoever runs the test.
        blocker = Path(config.url.removeprefix("file://")).parent / "not-a-directory"
        blocker.write_bytes(b"")
        return replace(config, url=f"file://{blocker}/backups")
    scheme, _, rest = config.url.partition("://")
    _, _, prefix = rest.partition("/")
    return replace(config, url=f"{scheme}://{unique_name('opskit-missing')}/{prefix}")


def bad_credentials(config: StorageConfig, request: pytest.FixtureRequest) -> StorageConfig | None:
    """Return ``config`` with credentials the server rejects, or None when its server checks none.

    S3 uses the credential-checking moto server (started on first use through ``request``).
    """
    options = dict(config.options)
    if config.kind == "s3":
        auth: S3AuthServer = request.getfixturevalue("s3_auth_server")
        options.update(
            endpoint_url=auth.url,
            access_key_id=SecretRef("AKIAOPSKITUNKNOWN000"),
            secret_access_key=SecretRef("not-a-secret"),
        )
        return replace(config, url=f"s3://{auth.bucket}/backups", options=options)
    if config.kind == "gs":
        # The emulator checks no tokens; a key that is not a service-account key is still caught.
        options["credentials"] = SecretRef('{"type": "service_account", "client_email": "nobody"}')
        return replace(config, options=options)
    if config.kind == "az":
        endpoint = _azure_blob_endpoint(options["connection_string"].resolve().reveal())
        wrong_key = "d3Jvbmcga2V5" * 8
        options["connection_string"] = SecretRef(
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={wrong_key};"
            f"BlobEndpoint={endpoint};"
        )
        return replace(config, options=options)
    return None


def read_only_credentials(config: StorageConfig, request: pytest.FixtureRequest) -> StorageConfig | None:
    """Return ``config`` with valid credentials that may read and list but not write, or None."""
    if config.kind == "s3":
        auth: S3AuthServer = request.getfixturevalue("s3_auth_server")
        options = {
            **config.options,
            "endpoint_url": auth.url,
            "access_key_id": SecretRef(auth.read_only_key),
            "secret_access_key": SecretRef(auth.read_only_secret),
        }
        return replace(config, url=f"s3://{auth.bucket}/backups", options=options)
    if config.kind == "az":
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        endpoint = _azure_blob_endpoint(config.options["connection_string"].resolve().reveal())
        container = config.url.partition("://")[2].split("/")[0]
        sas = generate_container_sas(
            AZURITE_ACCOUNT,
            container,
            account_key=AZURITE_KEY,
            permission=ContainerSasPermissions(read=True, list=True),
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )
        return replace(config, options={"account_url": endpoint, "sas_token": SecretRef(sas)})
    return None


def through_proxy(config: StorageConfig, proxy_url: str) -> StorageConfig:
    """Return ``config`` with its endpoint replaced by a fault proxy's URL."""
    options = dict(config.options)
    if config.kind in ("s3", "gs"):
        options["endpoint_url"] = proxy_url
    elif config.kind == "az":
        connection_string = options["connection_string"].resolve().reveal()
        endpoint = _azure_blob_endpoint(connection_string)
        upstream = endpoint.rsplit("/", 1)[0]
        options["connection_string"] = SecretRef(connection_string.replace(upstream, proxy_url))
    else:
        raise ValueError(f"a {config.kind} storage has no endpoint to proxy")
    return replace(config, options=options)


def upstream_of(config: StorageConfig) -> str:
    """Return the base URL of the server behind ``config`` (what a fault proxy forwards to)."""
    if config.kind in ("s3", "gs"):
        return str(config.options["endpoint_url"])
    if config.kind == "az":
        return _azure_blob_endpoint(config.options["connection_string"].resolve().reveal()).rsplit("/", 1)[0]
    raise ValueError(f"a {config.kind} storage has no endpoint")


def _azure_blob_endpoint(connection_string: str) -> str:
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name == "BlobEndpoint":
            return value.rstrip("/")
    raise ValueError("connection string has no BlobEndpoint")
