"""aws-sm:// references resolved against a real Secrets Manager API (moto_server over HTTP).

moto serves every AWS API on one port, so the session's ``s3_server`` is reused.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import boto3
import pytest

from opskit.core.errors import UnreachableError
from opskit.secrets import managers, references
from opskit.secrets.references import SecretRef

VALUE = "aws-Secret-value-never-printed"
# Secret names are unique per run: the moto server is shared by the whole session.
RUN = uuid.uuid4().hex[:8]


@pytest.fixture
def aws(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    for name, value in {
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": s3_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    references.clear_cache()
    managers.forget_clients()
    client = boto3.client("secretsmanager", endpoint_url=s3_server, region_name="us-east-1")
    yield client
    references.clear_cache()
    managers.forget_clients()


def test_aws_reference_reads_a_plain_secret(aws: object) -> None:
    aws.create_secret(Name=f"opskit-{RUN}/plain", SecretString=VALUE)  # type: ignore[attr-defined]
    assert SecretRef(f"aws-sm://opskit-{RUN}/plain").resolve().reveal() == VALUE


def test_aws_reference_picks_a_json_field(aws: object) -> None:
    document = json.dumps({"username": "app", "password": VALUE})
    arn = aws.create_secret(Name=f"opskit-{RUN}/json", SecretString=document)["ARN"]  # type: ignore[attr-defined]
    assert SecretRef(f"aws-sm://opskit-{RUN}/json#password").resolve().reveal() == VALUE
    assert SecretRef(f"aws-sm://{arn}#username").resolve().reveal() == "app"


def test_aws_reference_to_a_missing_secret_is_unreachable_naming_the_reference(aws: object) -> None:
    with pytest.raises(UnreachableError) as caught:
        SecretRef(f"aws-sm://opskit-{RUN}/absent#password").resolve()
    assert f"aws-sm://opskit-{RUN}/absent#password" in caught.value.message
    assert "ResourceNotFoundException" in caught.value.message
    assert caught.value.exit_code == 3


def test_aws_reference_with_an_absent_field_never_quotes_the_secret(aws: object) -> None:
    aws.create_secret(Name=f"opskit-{RUN}/fields", SecretString=json.dumps({"pw": VALUE}))  # type: ignore[attr-defined]
    with pytest.raises(UnreachableError) as caught:
        SecretRef(f"aws-sm://opskit-{RUN}/fields#password").resolve()
    assert VALUE not in caught.value.one_line()
    assert "fields: pw" in caught.value.message
