"""full-text search of messages and titles

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

One index per searched column, in each database's own full-text engine (no extra service):

- PostgreSQL: stored generated `tsvector` columns (message.content_fts, conversation.title_fts) with
  GIN indexes. Stored, not an expression index, because ranking and re-checking read the vector of
  every candidate row: recomputing to_tsvector() there made a common word cost seconds at a million
  messages. 'simple' lower-cases and splits words but does not stem or drop stop words: chats are
  written in many languages, and an English stemmer mangles the others ("données" -> "donné");
  prefix matching (`term:*`) gives most of what stemming would, the same way on every backend.
- SQLite: external-content FTS5 tables over message.content / conversation.title, kept in sync by
  triggers. They key on the tables' rowid, which VACUUM keeps for these tables in practice; a migration
  that rebuilds `message` or `conversation` in batch mode drops the triggers and changes the rowids,
  so it must run `_sqlite_up()`'s statements again (drop, create, 'rebuild').
- MySQL/MariaDB: InnoDB FULLTEXT indexes, built without the stop-word list so "the" or "about" can be
  searched; words shorter than innodb_ft_min_token_size (3) are not indexed, though prefixes of longer
  words are found.

The models declare none of this (tests/test_migrations.py leaves `*_fts*` objects out of its comparison).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, searched column)
SEARCHED = (("message", "content"), ("conversation", "title"))


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        for table, column in SEARCHED:
            op.execute(
                f"ALTER TABLE {table} ADD COLUMN {column}_fts tsvector "
                f"GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, {column})) STORED"
            )
            op.execute(f"CREATE INDEX ix_{table}_fts ON {table} USING gin ({column}_fts)")
            # 10x the default sample: without it a rare word is estimated ten times too common and
            # the planner walks a user's whole history instead of the index (100 ms, not 5).
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column}_fts SET STATISTICS 1000")
    elif dialect in ("mysql", "mariadb"):
        op.execute("SET @chatstudio_stopword = @@SESSION.innodb_ft_enable_stopword")
        op.execute("SET SESSION innodb_ft_enable_stopword = OFF")
        for table, column in SEARCHED:
            op.execute(f"ALTER TABLE {table} ADD FULLTEXT INDEX ix_{table}_fts ({column})")
        op.execute("SET SESSION innodb_ft_enable_stopword = @chatstudio_stopword")
    elif dialect == "sqlite":
        for table, column in SEARCHED:
            _sqlite_up(table, column)


def _sqlite_up(table: str, column: str) -> None:
    fts = f"{table}_fts"
    # remove_diacritics 0: accents matter, as with PostgreSQL's 'simple' configuration.
    op.execute(
        f"CREATE VIRTUAL TABLE {fts} USING fts5({column}, content='{table}', content_rowid='rowid', "
        "tokenize='unicode61 remove_diacritics 0')"
    )
    # Names come from SEARCHED above, never from input.
    insert = f"INSERT INTO {fts}(rowid, {column}) VALUES (new.rowid, new.{column});"  # noqa: S608
    remove = f"INSERT INTO {fts}({fts}, rowid, {column}) VALUES ('delete', old.rowid, old.{column});"  # noqa: S608
    op.execute(f"CREATE TRIGGER {fts}_ai AFTER INSERT ON {table} BEGIN {insert} END")
    op.execute(f"CREATE TRIGGER {fts}_ad AFTER DELETE ON {table} BEGIN {remove} END")
    op.execute(f"CREATE TRIGGER {fts}_au AFTER UPDATE OF {column} ON {table} BEGIN {remove} {insert} END")
    op.execute(f"INSERT INTO {fts}({fts}) VALUES ('rebuild')")  # noqa: S608


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table, column in SEARCHED:
        if dialect == "postgresql":
            op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS {column}_fts")  # drops its index too
        elif dialect in ("mysql", "mariadb"):
            op.execute(f"ALTER TABLE {table} DROP INDEX ix_{table}_fts")
        elif dialect == "sqlite":
            for suffix in ("ai", "ad", "au"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_fts_{suffix}")
            op.execute(f"DROP TABLE IF EXISTS {table}_fts")
