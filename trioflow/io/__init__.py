"""Connectors to the outside world: a TCP server as a push source (``tcp_source``,
``docs/tcp.md``), database writers (SQLite, PostgreSQL) and dead-letter tables
(``docs/databases.md``), Redis Streams: a consumer-group source and a stream writer
(``docs/redis.md``).

    import trioflow as tf
    import trioflow.io as tfio

    flow = (tfio.tcp_source(9000, host="127.0.0.1", decode=json.loads)
            | tf.batch(1000, timeout=0.1)
            | tfio.write_sqlite("app.db", "readings", columns=["id", "value"], key="id"))

Drivers that need a package are imported only when used: PostgreSQL needs
``pip install 'trioflow[postgres]'``, Redis ``pip install 'trioflow[redis]'``.
"""

from ._framing import FrameError as FrameError
from ._framing import Framer as Framer
from ._framing import Framing as Framing
from ._framing import LengthPrefixed as LengthPrefixed
from ._framing import Lines as Lines
from ._postgres import open_postgres_dead_letters as open_postgres_dead_letters
from ._postgres import write_postgres as write_postgres
from ._redis import RawStreamEntry as RawStreamEntry
from ._redis import RedisConsumer as RedisConsumer
from ._redis import RedisStatistics as RedisStatistics
from ._redis import StreamEntry as StreamEntry
from ._redis import TooManyDeliveries as TooManyDeliveries
from ._redis import UndecodableEntry as UndecodableEntry
from ._redis import redis_source as redis_source
from ._redis import write_redis_stream as write_redis_stream
from ._sqlite import open_sqlite_dead_letters as open_sqlite_dead_letters
from ._sqlite import write_sqlite as write_sqlite
from ._table import Row as Row
from ._tcp import ConnectionInfo as ConnectionInfo
from ._tcp import Received as Received
from ._tcp import Rejected as Rejected
from ._tcp import Replies as Replies
from ._tcp import TcpServer as TcpServer
from ._tcp import TcpStatistics as TcpStatistics
from ._tcp import tcp_source as tcp_source
from ._writer import DeadLetterTable as DeadLetterTable
from ._writer import TableError as TableError

__all__ = [
    "ConnectionInfo",
    "DeadLetterTable",
    "FrameError",
    "Framer",
    "Framing",
    "LengthPrefixed",
    "Lines",
    "Received",
    "RawStreamEntry",
    "RedisConsumer",
    "RedisStatistics",
    "Rejected",
    "Replies",
    "Row",
    "StreamEntry",
    "TableError",
    "TcpServer",
    "TcpStatistics",
    "TooManyDeliveries",
    "UndecodableEntry",
    "open_postgres_dead_letters",
    "open_sqlite_dead_letters",
    "redis_source",
    "tcp_source",
    "write_postgres",
    "write_redis_stream",
    "write_sqlite",
]
