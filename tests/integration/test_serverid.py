"""The identity of a real PostgreSQL server, read on every new connection of the master's
engine (autocommit, no ping) and of a transactional one: one cluster, one timeline, no
failover seen, and no transaction left open by the read."""

from __future__ import annotations

import pytest
from psycopg2.extensions import TRANSACTION_STATUS_IDLE
from sqlalchemy import URL

from pandaserver.db.base.engine import engine_from_url
from pandaserver.db.base.serverid import IdentityWatch


@pytest.mark.parametrize("autocommit", [True, False], ids=["master", "transactional"])
def test_each_new_connection_reads_the_same_server_and_leaves_no_transaction(
        pg_url: URL, autocommit: bool) -> None:
    engine = engine_from_url(pg_url, autocommit=autocommit, pre_ping=False,
                             statement_timeout=4.0)
    watch = IdentityWatch(engine)
    try:
        for _ in range(2):
            with engine.connect() as conn:  # a new connection: the read ran at its connect
                raw = conn.connection.dbapi_connection
                assert raw is not None
                assert raw.info.transaction_status == TRANSACTION_STATUS_IDLE
            engine.dispose()  # the next checkout is a new connection
        first = watch.current
        assert first is not None and first.system_id > 0 and first.timeline == 1
        assert first.started is not None
        assert (watch.epoch, watch.restarts, watch.unreadable) == (0, 0, False)
    finally:
        engine.dispose()
