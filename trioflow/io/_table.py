"""What the database writers share: the target table as validated data, and rows as tuples.

A ``Table`` is built when the stage is defined, so a bad table or column name fails there
(``DefinitionValueError`` naming the argument), not at the first batch. It renders the SQL
both writers need (quoted identifiers, ``CREATE TABLE``, the upsert clause); the dialects
differ only in placeholders and in how rows travel (``executemany`` vs ``COPY``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar, final

import attrs

from .._errors import DefinitionTypeError, DefinitionValueError

#: A row: a mapping from column name to value, or a sequence in column order.
Row: TypeAlias = Mapping[str, object] | Sequence[object]
#: the row type of one writer's batches (a writer emits what it takes)
R = TypeVar("R", bound=Row)


def quote(name: str) -> str:
    """An SQL identifier, double-quoted (both SQLite and PostgreSQL accept this form)."""
    return '"' + name.replace('"', '""') + '"'


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise DefinitionValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


@final
@attrs.frozen(kw_only=True)
class Table:
    """The target of a writer: name, columns (with SQL types when the table may be created)
    and the key columns of an upsert (none: plain inserts)."""

    name: str
    columns: tuple[str, ...]
    #: SQL types by column, when given (needed to create the table)
    types: Mapping[str, str] | None
    key: tuple[str, ...]
    create: bool

    @classmethod
    def build(
        cls, operator_name: str, table: object, columns: object, key: object, create: object
    ) -> Table:
        _check_name(f"table of {operator_name}", table)
        assert isinstance(table, str)
        types: dict[str, str] | None
        if isinstance(columns, Mapping):
            types = {}
            for c, t in columns.items():
                _check_name(f"a column name of {operator_name}", c)
                _check_name(f"the SQL type of column {c!r} of {operator_name}", t)
                types[c] = t
            cols = tuple(types)
        elif isinstance(columns, Sequence) and not isinstance(columns, str | bytes):
            types = None
            cols = tuple(_check_name(f"a column name of {operator_name}", c) for c in columns)
        else:
            raise DefinitionTypeError(
                f"columns of {operator_name} must be a sequence of names or a mapping of name to "
                f"SQL type, got {columns!r}"
            )
        if not cols:
            raise DefinitionValueError(f"columns of {operator_name} must name at least one column")
        if len(set(cols)) != len(cols):
            raise DefinitionValueError(f"columns of {operator_name} repeat a name: {cols!r}")
        if key is None:
            keys: tuple[str, ...] = ()
        elif isinstance(key, str):
            keys = (key,)
        elif isinstance(key, Sequence) and not isinstance(key, bytes) and key:
            keys = tuple(_check_name(f"a key column of {operator_name}", k) for k in key)
        else:
            raise DefinitionValueError(
                f"key of {operator_name} must be a column name, a sequence of them, or None, got {key!r}"
            )
        for k in keys:
            if k not in cols:
                raise DefinitionValueError(
                    f"key of {operator_name}: {k!r} is not one of the columns {cols!r}")
        if not isinstance(create, bool):
            raise DefinitionTypeError(f"create of {operator_name} must be True or False, got {create!r}")
        if create and types is None:
            raise DefinitionValueError(
                f"create=True of {operator_name} needs the column types: pass columns as a mapping "
                f"of name to SQL type, e.g. {{'id': 'INTEGER', 'name': 'TEXT'}}"
            )
        return cls(name=table, columns=cols, types=types, key=keys, create=create)

    @property
    def qname(self) -> str:
        return quote(self.name)

    @property
    def column_list(self) -> str:
        return ", ".join(quote(c) for c in self.columns)

    def create_sql(self) -> str:
        assert self.types is not None
        parts = [f"{quote(c)} {t}" for c, t in self.types.items()]
        if self.key:
            parts.append(f"PRIMARY KEY ({', '.join(quote(k) for k in self.key)})")
        return f"CREATE TABLE IF NOT EXISTS {self.qname} ({', '.join(parts)})"

    def conflict_clause(self) -> str:
        """``ON CONFLICT (key) DO UPDATE SET c = excluded.c, ...`` (both dialects), or
        ``DO NOTHING`` when every column is a key column."""
        keys = ", ".join(quote(k) for k in self.key)
        rest = [c for c in self.columns if c not in self.key]
        if not rest:
            return f"ON CONFLICT ({keys}) DO NOTHING"
        sets = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in rest)
        return f"ON CONFLICT ({keys}) DO UPDATE SET {sets}"

    def insert_sql(self, placeholder: str, rows: int = 1) -> str:
        """``INSERT`` of ``rows`` rows (a multi-row ``VALUES``), with the upsert clause when
        the table has a key."""
        row = "(" + ",".join([placeholder] * len(self.columns)) + ")"
        sql = f"INSERT INTO {self.qname} ({self.column_list}) VALUES {','.join([row] * rows)}"
        return f"{sql} {self.conflict_clause()}" if self.key else sql

    def row_converter(self) -> Callable[[Sequence[Row]], Sequence[Sequence[Any]]]:
        """A function turning a batch into a list of sequences in column order: sequences are
        kept as they are (checked for their length), mappings are looked up by column name
        (a missing column raises ``KeyError`` naming it)."""
        n = len(self.columns)
        cols = self.columns
        get = operator.itemgetter(*cols)
        single = n == 1

        def convert(batch: Sequence[Row]) -> Sequence[Sequence[Any]]:
            for row in batch:
                if type(row) is not tuple or len(row) != n:
                    break
            else:
                return batch  # type: ignore[return-value]  # all tuples of the right length: as they are
            out: list[Sequence[Any]] = []
            append = out.append
            for row in batch:
                if isinstance(row, tuple | list):
                    if len(row) != n:
                        raise ValueError(
                            f"a row of {len(row)} values for the {n} columns {cols!r}: {row!r}"[:300]
                        )
                    append(row)
                elif isinstance(row, Mapping):
                    append((get(row),) if single else get(row))
                else:
                    raise TypeError(
                        f"a row must be a mapping or a tuple/list in column order, got {type(row).__name__}"
                    )
            return out

        return convert
