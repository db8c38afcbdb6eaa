"""Cloud secret-manager references: ``aws-sm://``, ``gcp-sm://`` and ``azure-kv://``.

Reference forms (an optional ``#json-key`` picks one field of a JSON secret)::

    aws-sm://secret-id[#json-key]                 AWS Secrets Manager; secret-id may be a name or an ARN
    gcp-sm://projects/P/secrets/S[/versions/V][#json-key]     Google Secret Manager (version default: latest)
    azure-kv://vault-name/secret-name[/version][#json-key]    Azure Key Vault; vault-name may be a full host

Parsing (:func:`parse`) is pure, so the config can reject a malformed reference without
any SDK. Resolving imports the SDK lazily: a missing SDK is a MissingExtraError (exit 2)
with the ``pip install`` line; any failure to fetch is an UnreachableError (exit 3) that
names the reference and never the value. The AWS client honours boto3's own settings,
including ``AWS_ENDPOINT_URL_SECRETS_MANAGER`` / ``AWS_ENDPOINT_URL`` (how tests reach moto).

Tests replace :data:`CLIENT_FACTORIES` entries to inject a fake client at the SDK boundary.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opskit.core.errors import ConfigError, MissingExtraError, UnreachableError
from opskit.core.redaction import redact_text

SCHEMES = ("aws-sm", "gcp-sm", "azure-kv")
# Scheme -> (SDK module that must import, extra that installs it).
_SDKS = {
    "aws-sm": ("boto3", "aws-secrets"),
    "gcp-sm": ("google.cloud.secretmanager", "gcp-secrets"),
    "azure-kv": ("azure.keyvault.secrets", "azure-secrets"),
}


@dataclass(frozen=True)
class CloudRef:
    """A parsed cloud secret reference.

    ``location`` is what the client is built for (AWS region from an ARN or None, the
    Azure vault URL, "" for GCP); ``name`` is what is fetched; ``json_key`` picks a field.
    """

    scheme: str
    location: str | None
    name: str
    version: str | None
    json_key: str | None
    reference: str


def parse(reference: str) -> CloudRef:
    """Parse a cloud secret reference (``aws-sm://...``); return a CloudRef.

    Raises ConfigError saying what form the reference should have.
    """
    scheme, sep, rest = reference.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ConfigError(f"'{_shown(reference)}' is not a secret-manager reference")
    body, hash_sign, json_key = rest.partition("#")
    if hash_sign and not json_key:
        raise ConfigError(f"secret reference {scheme}://... has an empty '#json-key'")
    key = json_key or None
    if scheme == "aws-sm":
        return _parse_aws(body, key, reference)
    if scheme == "gcp-sm":
        return _parse_gcp(body, key, reference)
    return _parse_azure(body, key, reference)


def _parse_aws(body: str, key: str | None, reference: str) -> CloudRef:
    if not body:
        raise ConfigError("secret reference aws-sm:// needs a secret id: aws-sm://secret-id#json-key")
    region = None
    # arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME - the ARN names its own region.
    parts = body.split(":")
    if body.startswith("arn:"):
        if len(parts) < 7 or parts[2] != "secretsmanager" or not parts[3]:
            raise ConfigError(
                "secret reference aws-sm://arn:... is not a Secrets Manager ARN "
                "(arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)"
            )
        region = parts[3]
    return CloudRef("aws-sm", region, body, None, key, reference)


def _parse_gcp(body: str, key: str | None, reference: str) -> CloudRef:
    parts = body.strip("/").split("/")
    form = "gcp-sm://projects/PROJECT/secrets/SECRET[/versions/VERSION]"
    if len(parts) == 4:
        parts += ["versions", "latest"]
    if len(parts) != 6 or parts[0] != "projects" or parts[2] != "secrets" or parts[4] != "versions":
        raise ConfigError(f"secret reference gcp-sm://... must look like {form}")
    if not all(parts[i] for i in (1, 3, 5)):
        raise ConfigError(f"secret reference gcp-sm://... has an empty part; use {form}")
    return CloudRef("gcp-sm", "", "/".join(parts), parts[5], key, reference)


def _parse_azure(body: str, key: str | None, reference: str) -> CloudRef:
    parts = body.strip("/").split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError("secret reference azure-kv://... must look like azure-kv://VAULT/SECRET[/VERSION]")
    vault = parts[0]
    # A bare vault name lives in the public cloud; a full host (sovereign clouds) is taken as is.
    host = vault if "." in vault else f"{vault}.vault.azure.net"
    version = parts[2] if len(parts) == 3 else None
    return CloudRef("azure-kv", f"https://{host}/", parts[1], version, key, reference)


def _shown(reference: str) -> str:
    # Only the scheme: a malformed reference may be a pasted secret.
    scheme = reference.partition(":")[0]
    return f"{scheme}:..." if len(scheme) < 20 else "value"


# --------------------------------------------------------------------------- clients


def _aws_client(ref: CloudRef) -> Any:
    import boto3

    session = boto3.session.Session()
    # boto3 reads AWS_DEFAULT_REGION; AWS_REGION is what Lambda, ECS and the other SDKs set.
    region = ref.location or session.region_name or os.environ.get("AWS_REGION")
    if not region:
        raise ConfigError(
            f"secret {ref.reference} needs an AWS region",
            hint="set AWS_REGION (or AWS_DEFAULT_REGION), or use the secret's full ARN",
        )
    return session.client("secretsmanager", region_name=region)


def _gcp_client(ref: CloudRef) -> Any:
    from google.cloud import secretmanager

    return secretmanager.SecretManagerServiceClient()


def _azure_client(ref: CloudRef) -> Any:
    from azure.identity import DefaultAzureCredential
    from azure.keyvault.secrets import SecretClient

    return SecretClient(vault_url=ref.location or "", credential=DefaultAzureCredential())


# Scheme -> factory(CloudRef) -> SDK client. Replaced in tests with fakes.
CLIENT_FACTORIES: dict[str, Callable[[CloudRef], Any]] = {
    "aws-sm": _aws_client,
    "gcp-sm": _gcp_client,
    "azure-kv": _azure_client,
}
_clients: dict[tuple[str, str | None], Any] = {}
_clients_lock = threading.Lock()


def _client(ref: CloudRef) -> Any:
    """Return a client for the reference's scheme and location, built once per process."""
    module, extra = _SDKS[ref.scheme]
    factory = CLIENT_FACTORIES[ref.scheme]
    if factory is _DEFAULT_FACTORIES[ref.scheme]:
        try:
            __import__(module)
        except ImportError as exc:
            raise MissingExtraError(
                f"secret {ref.reference} needs the {ref.scheme} SDK: pip install 'opskit[{extra}]'"
            ) from exc
    cache_key = (ref.scheme, ref.location)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            try:
                client = factory(ref)
            except ConfigError:
                raise
            except Exception as exc:
                raise _unreachable(ref, exc) from exc
            _clients[cache_key] = client
    return client


def forget_clients() -> None:
    """Drop the cached SDK clients (tests, and after credentials change)."""
    with _clients_lock:
        _clients.clear()


_DEFAULT_FACTORIES = dict(CLIENT_FACTORIES)


# --------------------------------------------------------------------------- fetching


def _fetch_aws(ref: CloudRef) -> str | bytes:
    client = _client(ref)
    response = client.get_secret_value(SecretId=ref.name)
    if response.get("SecretString") is not None:
        return str(response["SecretString"])
    return bytes(response["SecretBinary"])


def _fetch_gcp(ref: CloudRef) -> str | bytes:
    client = _client(ref)
    response = client.access_secret_version(request={"name": ref.name})
    return bytes(response.payload.data)


def _fetch_azure(ref: CloudRef) -> str | bytes:
    client = _client(ref)
    secret = client.get_secret(ref.name, ref.version)
    if secret.value is None:
        raise UnreachableError(f"secret {ref.reference} has no value", hint="set a value in the Key Vault")
    return str(secret.value)


_FETCHERS: dict[str, Callable[[CloudRef], str | bytes]] = {
    "aws-sm": _fetch_aws,
    "gcp-sm": _fetch_gcp,
    "azure-kv": _fetch_azure,
}


def resolve(reference: str) -> str:
    """Fetch the secret a cloud reference names and return its value (or its ``#json-key`` field).

    Raises ConfigError for a malformed reference, MissingExtraError when the SDK is not
    installed, UnreachableError (naming the reference, never the value) when the fetch fails.
    """
    ref = parse(reference)
    try:
        raw = _FETCHERS[ref.scheme](ref)
    except (ConfigError, UnreachableError):
        raise
    except Exception as exc:
        raise _unreachable(ref, exc) from exc
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UnreachableError(
                f"secret {ref.reference} is binary, not UTF-8 text", hint="store the secret as text"
            ) from None
    else:
        text = raw
    return _pick(ref, text) if ref.json_key else text


def _pick(ref: CloudRef, text: str) -> str:
    """Return the ``json_key`` field of a JSON secret. The secret's content never enters a message."""
    try:
        document = json.loads(text)
    except ValueError:
        raise UnreachableError(
            f"secret {ref.reference} is not a JSON object, so '#{ref.json_key}' cannot be read from it",
            hint="drop the '#key' part or store the secret as JSON",
        ) from None
    if not isinstance(document, dict) or ref.json_key not in document:
        fields = ", ".join(sorted(str(k) for k in document)) if isinstance(document, dict) else "none"
        raise UnreachableError(
            f"secret {ref.reference} has no field '{ref.json_key}' (fields: {fields})",
            hint="fix the '#key' part of the reference",
        )
    value = document[ref.json_key]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UnreachableError(
            f"field '{ref.json_key}' of secret {ref.reference} is not a string or number",
            hint="point the '#key' at a text field",
        )
    return str(value)


def _unreachable(ref: CloudRef, exc: BaseException) -> UnreachableError:
    """Translate an SDK error into an UnreachableError naming the reference and the cause."""
    cause = _describe_error(exc)
    return UnreachableError(
        f"secret {ref.reference} cannot be read: {cause}",
        hint=_HINTS[ref.scheme],
    )


def _describe_error(exc: BaseException) -> str:
    # botocore ClientError carries a code; google/azure errors have readable messages.
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        code = error.get("Code")
        if code:
            return redact_text(f"{code}: {error.get('Message', '')}".rstrip(": "))
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = redact_text(text)[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_HINTS = {
    "aws-sm": "check the secret id, region and that the credentials allow secretsmanager:GetSecretValue",
    "gcp-sm": "check the resource name and that the service account has roles/secretmanager.secretAccessor",
    "azure-kv": "check the vault and secret names and that the identity may 'get' secrets in the vault",
}


def resolvers() -> dict[str, Callable[[str], str]]:
    """Return the cloud resolvers by scheme, for :data:`opskit.secrets.references.RESOLVERS`."""
    # SecretRef passes what follows 'scheme:' ("//secret-id#key"); each resolver rebuilds the full reference.
    return {scheme: _resolver_for(scheme) for scheme in SCHEMES}


def _resolver_for(scheme: str) -> Callable[[str], str]:
    def resolver(rest: str) -> str:
        return resolve(f"{scheme}:{rest}")

    return resolver
