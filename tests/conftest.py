"""
Fixtures shared by every test directory: the throwaway PostgreSQL cluster.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg_cluster import PostgresCluster, require_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """
    One PostgreSQL cluster for the whole test session (about a second to
    start); tests take a database of their own with L{pg_url}.
    """
    cluster = PostgresCluster(require_postgres())
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(postgres: PostgresCluster) -> str:
    """
    The URL of a new, empty database (not migrated).
    """
    return postgres.create_database()
