"""The registry's schema as an ordered list of migrations, applied when a database is opened.

`PRAGMA user_version` holds how many have run; a later change appends, never edits, a migration.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

_APPEND_ONLY = "SELECT RAISE(ABORT, 'the audit log is append-only')"

#: Each migration is a tuple of statements (not a script: `executescript` would commit early).
MIGRATIONS: list[tuple[str, ...]] = [
    (
        # NOTE: one row; every change bumps it, so a reader polls one integer to see any change.
        """CREATE TABLE meta (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            generation INTEGER NOT NULL
        )""",
        "INSERT INTO meta (id, generation) VALUES (1, 0)",
        """CREATE TABLE keys (
            key_id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL,
            models TEXT NOT NULL,
            rate REAL NOT NULL DEFAULT 0 CHECK (rate >= 0),
            burst INTEGER NOT NULL DEFAULT 0 CHECK (burst >= 0),
            concurrency INTEGER NOT NULL DEFAULT 0 CHECK (concurrency >= 0),
            hash TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            created_by TEXT NOT NULL,
            revoked_at REAL
        )""",
        """CREATE TABLE traffic (
            model TEXT PRIMARY KEY,
            weights TEXT NOT NULL,
            sticky TEXT NOT NULL DEFAULT 'key',
            shadow_version TEXT,
            shadow_percent REAL NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            before TEXT,
            after TEXT
        )""",
        "CREATE INDEX audit_target ON audit (target)",
        f"CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN {_APPEND_ONLY}; END",
        f"CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN {_APPEND_ONLY}; END",
        # For model lifecycle (registered versions and their aliases); no API yet.
        """CREATE TABLE models (
            name TEXT PRIMARY KEY,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE versions (
            model TEXT NOT NULL REFERENCES models (name),
            version TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            backend TEXT NOT NULL,
            signature TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at REAL NOT NULL,
            notes TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL DEFAULT 'validating'
                CHECK (state IN ('validating', 'ready', 'failed', 'retired')),
            reason TEXT,
            PRIMARY KEY (model, version)
        )""",
        """CREATE TABLE aliases (
            model TEXT NOT NULL,
            alias TEXT NOT NULL,
            version TEXT NOT NULL,
            PRIMARY KEY (model, alias),
            FOREIGN KEY (model, version) REFERENCES versions (model, version)
        )""",
    ),
    (
        # Every move of an alias, so `rollback` can go back one step; the audit log says who.
        """CREATE TABLE alias_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            model TEXT NOT NULL,
            alias TEXT NOT NULL,
            version TEXT NOT NULL,
            at REAL NOT NULL
        )""",
        "CREATE INDEX alias_history_model ON alias_history (model, alias, id)",
    ),
    (
        # Operator settings every gateway process adopts (trace and logging extensions), as JSON.
        """CREATE TABLE settings (
            name TEXT PRIMARY KEY CHECK (name IN ('trace', 'logging')),
            value TEXT NOT NULL,
            updated_at REAL NOT NULL
        )""",
    ),
]

LATEST = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """How many migrations this database has had."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection,
            migrations: Sequence[tuple[str, ...]] = tuple(MIGRATIONS)) -> int:
    """Apply the migrations this database lacks, all in one transaction; return its version.

    `migrations` defaults to the registry's; other databases (answers.db) pass their own list.
    The connection must be in autocommit mode (`isolation_level=None`). Safe to run from several
    processes at once: the version is read again under the write lock, so each migration runs once.
    """
    latest = len(migrations)
    if schema_version(conn) >= latest:
        return schema_version(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = schema_version(conn)
        for statements in migrations[current:]:
            for statement in statements:
                conn.execute(statement)
        # NOTE: user_version is part of the transaction, so a failed migration leaves it as it was.
        conn.execute(f"PRAGMA user_version = {max(current, latest)}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return schema_version(conn)
