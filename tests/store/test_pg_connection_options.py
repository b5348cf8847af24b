"""PostgreSQL connections carry TCP keepalives and a TCP user timeout: a connection
whose peer went silent (a partition, a failover behind the same address) fails within
seconds instead of holding its request, and the curriculum's lock, for the kernel's
retransmission limit (about 15 minutes). Checked on the live libpq connection; a URL
that sets one of them keeps its own value."""

from __future__ import annotations

from sqlalchemy import text

from paceline_server.store.connection import DEAD_PEER, create_sql_engine
from support import postgres_url


def conninfo(url: str) -> dict[str, str]:
    engine = create_sql_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            raw = conn.connection.driver_connection
            return {o.keyword.decode(): (o.val or b"").decode()
                    for o in raw.pgconn.info}  # type: ignore[union-attr]
    finally:
        engine.dispose()


def test_dead_peer_options_reach_libpq() -> None:
    found = conninfo(postgres_url())
    assert {key: found[key] for key in DEAD_PEER} == {
        key: str(value) for key, value in DEAD_PEER.items()}


def test_the_url_keeps_its_own_values() -> None:
    url = postgres_url()
    found = conninfo(f"{url}{'&' if '?' in url else '?'}keepalives_idle=42")
    assert found["keepalives_idle"] == "42" and found["tcp_user_timeout"] == "20000"
