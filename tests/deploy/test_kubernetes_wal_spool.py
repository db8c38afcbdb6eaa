"""The daemon's state volume, which holds a ``wal-stream`` job's spool, against ``wal.max_spool``."""

from __future__ import annotations

from opskit.config.wal import DEFAULT_MAX_SPOOL
from opskit.core.units import parse_size
from tests.deploy.test_kubernetes import by_kind


def test_the_daemon_s_state_volume_holds_more_than_a_full_wal_spool_so_the_kubelet_does_not_evict_it_first() -> None:
    (deployment,) = by_kind("Deployment")
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    limit = volumes["state"]["emptyDir"]["sizeLimit"]

    assert parse_size(limit.replace("Gi", "GiB").replace("Mi", "MiB")) > DEFAULT_MAX_SPOOL
