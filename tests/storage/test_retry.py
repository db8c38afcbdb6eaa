"""The shared retry policy and each backend's idea of a transient error."""

from __future__ import annotations

from typing import Any

import botocore.exceptions as bex
import pytest
import requests
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from google.api_core import exceptions as gexc
from structlog.testing import capture_logs

from opskit.storage import azure, gcs, s3_errors
from opskit.storage.retry import DEFAULT_MAX_ATTEMPTS, RetryPolicy, max_attempts_option


class Flaky:
    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def fast(max_attempts: int = 5, transient: bool = True) -> RetryPolicy:
    return RetryPolicy(
        storage="s",
        max_attempts=max_attempts,
        is_transient=lambda exc: transient,
        initial_wait=0.0,
        max_wait=0.0,
    )


def test_a_transient_error_is_retried_and_each_retry_is_logged_as_a_warning() -> None:
    flaky = Flaky(2, ConnectionResetError("reset"))
    with capture_logs() as logs:
        assert fast().call(flaky, "uploading part 3 of", "k") == "ok"
    assert flaky.calls == 3
    assert [(e["log_level"], e["attempt"], e["action"], e["key"]) for e in logs] == [
        ("warning", 1, "uploading part 3 of", "k"),
        ("warning", 2, "uploading part 3 of", "k"),
    ]


def test_attempts_are_bounded_and_the_last_error_is_raised() -> None:
    flaky = Flaky(10, ConnectionResetError("reset"))
    with pytest.raises(ConnectionResetError):
        fast(max_attempts=3).call(flaky, "x")
    assert flaky.calls == 3


def test_a_permanent_error_is_not_retried() -> None:
    flaky = Flaky(1, PermissionError("denied"))
    with pytest.raises(PermissionError):
        fast(transient=False).call(flaky, "x")
    assert flaky.calls == 1


def test_the_backoff_doubles_up_to_the_maximum() -> None:
    policy = RetryPolicy(storage="s", initial_wait=0.5, max_wait=3.0)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_max_attempts_defaults_to_5() -> None:
    assert max_attempts_option({}) == DEFAULT_MAX_ATTEMPTS == 5
    assert max_attempts_option({"max_attempts": 2}) == 2
    assert max_attempts_option({"max_attempts": True}) == 5


def s3_error(code: str, status: int) -> bex.ClientError:
    response: Any = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return bex.ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (s3_error("SlowDown", 503), True),
        (s3_error("InternalError", 500), True),
        (s3_error("RequestTimeout", 400), True),
        (bex.EndpointConnectionError(endpoint_url="http://x"), True),
        (bex.ReadTimeoutError(endpoint_url="http://x"), True),
        (s3_error("NoSuchBucket", 404), False),
        (s3_error("AccessDenied", 403), False),
        (s3_error("InvalidAccessKeyId", 403), False),
    ],
)
def test_s3_classifies_errors(error: Exception, transient: bool) -> None:
    assert s3_errors.is_transient(error) is transient


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (gexc.ServiceUnavailable("x"), True),
        (gexc.TooManyRequests("x"), True),
        (requests.ConnectionError("x"), True),
        (gexc.NotFound("x"), False),
        (gexc.Forbidden("x"), False),
    ],
)
def test_gcs_classifies_errors(error: Exception, transient: bool) -> None:
    assert gcs.is_transient(error) is transient


def azure_error(status: int) -> HttpResponseError:
    error = HttpResponseError(message="x")
    error.status_code = status
    return error


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (azure_error(503), True),
        (azure_error(500), True),
        (ServiceRequestError("x"), True),
        (azure_error(404), False),
        (azure_error(403), False),
    ],
)
def test_azure_classifies_errors(error: Exception, transient: bool) -> None:
    assert azure.is_transient(error) is transient
