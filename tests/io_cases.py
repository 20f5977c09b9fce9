"""Cases shared by the SQLite and PostgreSQL writer tests."""

from __future__ import annotations

import trioflow as tf

#: the socket example's dead-letter table (issue 10): connection, line, error, raw (1 KiB)
SOCKET_COLUMNS = {"connection": "TEXT", "line": "INTEGER", "error": "TEXT", "raw": "TEXT"}
#: (connection, line number, raw line) items that all fail to parse
SOCKET_LINES = [("c1", 1, "{}"), ("c1", 2, "x" * 5000), ("c2", 1, "{bad")]
#: the table's rows afterwards, as (connection, line, error, length(raw)), in line order
SOCKET_LETTERS = [("c1", 1, "bad line 1", 2), ("c1", 2, "bad line 2", 1024), ("c2", 1, "bad line 1", 4)]


def parse_socket_line(line: tuple[str, int, str]) -> object:
    raise ValueError(f"bad line {line[1]}")


def socket_letter_row(e: tf.DeadLetterEntry) -> tuple[object, ...]:
    conn, n, raw = e.item
    return (conn, n, str(e.exception), raw[:1024])
