"""The migration fixtures (a fresh database, migration folders) serve the Flyway engine tests too."""

from tests.migrate.conftest import *  # noqa: F403
