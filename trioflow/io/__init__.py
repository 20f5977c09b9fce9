"""Connectors to the outside world: database writers (SQLite, PostgreSQL) and dead-letter tables.

    import trioflow as tf
    import trioflow.io as tfio

    flow = source | tf.batch(1000, timeout=0.1) | tfio.write_sqlite("app.db", "readings",
                                                                     columns=["id", "value"], key="id")

Drivers that need a package are imported only when used: PostgreSQL needs
``pip install 'trioflow[postgres]'``.
"""

from ._postgres import open_postgres_dead_letters as open_postgres_dead_letters
from ._postgres import write_postgres as write_postgres
from ._sqlite import open_sqlite_dead_letters as open_sqlite_dead_letters
from ._sqlite import write_sqlite as write_sqlite
from ._table import Row as Row
from ._writer import TableError as TableError

__all__ = [
    "Row",
    "TableError",
    "open_postgres_dead_letters",
    "open_sqlite_dead_letters",
    "write_postgres",
    "write_sqlite",
]
