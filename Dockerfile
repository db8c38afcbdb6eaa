# opskit: backups, migrations and restore drills for PostgreSQL, as a sidecar or a job.
#
#   docker build -t opskit .
#   docker run --rm opskit --help
#   docker run -v ./opskit.toml:/etc/opskit/opskit.toml:ro -v ./jobs:/etc/opskit/jobs:ro opskit   # the daemon
#
# Two stages: the first builds a virtualenv with opskit and every storage SDK; the second is a
# slim runtime with PostgreSQL client tools 13-18 (opskit picks, per server, the lowest major that
# is at least the server's), age and zstd (to restore by hand without opskit), and no compiler.
# Python packages are pinned by constraints.txt (the versions the test suite passed with).
# tests/deploy/test_dockerfile.py lints this file with hadolint; no image is built in the tests.

ARG PYTHON_VERSION=3.12
ARG DEBIAN_RELEASE=bookworm

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/opskit
WORKDIR /src
# Dependencies first, from pyproject.toml and constraints.txt alone, so editing the code reuses
# this layer; then opskit itself without dependencies, and `pip check` proves nothing is missing.
COPY pyproject.toml constraints.txt scripts/image-requirements.py ./
RUN python image-requirements.py pyproject.toml > requirements.txt \
    && /opt/opskit/bin/pip install -c constraints.txt -r requirements.txt
COPY README.md LICENSE ./
COPY opskit ./opskit
RUN /opt/opskit/bin/pip install --no-deps . \
    && /opt/opskit/bin/pip check \
    && /opt/opskit/bin/opskit --version

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE}
ARG DEBIAN_RELEASE
ARG PG_MAJORS="13 14 15 16 17 18"
# PostgreSQL client tools for every supported server major come from the PGDG apt repository:
# Debian itself ships only one major per release.
# DL3008 (unpinned apt versions), on purpose: PGDG keeps only the newest minor of each client
# in its index, so a pinned `postgresql-client-17=17.x-1.pgdg12+1` stops building at the next
# minor release, and the minors are the security fixes we want. A build is reproduced from its
# image digest; `pg_dump --version` below records the versions in the build log.
# SC2086: ${PG_MAJORS} is split into one package name per major on purpose.
# hadolint ignore=DL3008,SC2086
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl gnupg; \
    install -d /usr/share/postgresql-common/pgdg; \
    curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
        https://www.postgresql.org/media/keys/ACCC4CF8.asc; \
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt ${DEBIAN_RELEASE}-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    apt-get install -y --no-install-recommends age zstd \
        $(for major in ${PG_MAJORS}; do printf 'postgresql-client-%s ' "$major"; done); \
    apt-get purge -y --auto-remove curl gnupg; \
    rm -rf /var/lib/apt/lists/*; \
    for major in ${PG_MAJORS}; do /usr/lib/postgresql/$major/bin/pg_dump --version; done; \
    age --version; zstd --version

COPY --from=build /opt/opskit /opt/opskit
COPY jobs /usr/share/opskit/jobs-examples
# Runbooks (and the SQL checks their steps name, runbooks/checks/) where opskit looks for them.
COPY runbooks /usr/share/opskit/runbooks
COPY LICENSE /usr/share/doc/opskit/LICENSE
COPY deploy/prometheus-alerts.yml /usr/share/opskit/prometheus-alerts.yml
COPY deploy/grafana-dashboard.json /usr/share/opskit/grafana-dashboard.json

# A fixed, non-root uid so Kubernetes' runAsNonRoot can verify it and volumes can be chowned to it.
RUN groupadd --system --gid 10001 opskit \
    && useradd --system --uid 10001 --gid opskit --home-dir /var/lib/opskit --create-home opskit \
    && install -d -o opskit -g opskit /etc/opskit /etc/opskit/jobs /var/lib/opskit/backups
# /var/lib/opskit/backups exists in the image owned by 10001: Docker initialises an empty named
# volume mounted there (deploy/docker-compose.sidecar.yml) from it, ownership included, so the
# daemon can write its backups into a fresh volume without running as root.

ENV PATH=/opt/opskit/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OPSKIT_CONFIG=/etc/opskit/opskit.toml
USER 10001:10001
WORKDIR /var/lib/opskit
EXPOSE 9187

# /livez makes no external call: a slow database never gets the container restarted.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9187/livez', timeout=4)"]

ENTRYPOINT ["opskit"]
CMD ["--log-format", "json", "daemon", "--jobs-dir", "/etc/opskit/jobs", "--listen", "0.0.0.0:9187"]
