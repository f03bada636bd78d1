"""The answer store: inference answers and their ground truth in `answers.db`, beside the registry.

Blocking SQLite calls, for the answer log's writer thread and for `tensorgate ab report`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from common.registry.migrations import migrate

#: A row of `answers`: model, request id, version, code, at, latency (s), kind, predicted.
AnswerRow = tuple[str, str, str, str, float, float, int | None, float | None]
#: What an answer's first output was: a class index (classifiers) or a value (regression).
CLASS, VALUE = 1, 2
#: Newest answers (and feedback rows) kept per model; older ones are pruned as new ones come.
KEEP_PER_MODEL = 1_000_000
#: Answers kept over all models together; the oldest go first.
MAX_ANSWERS = 2_000_000
#: Feedback rows one caller (key or JWT subject) keeps per model; its own oldest go first.
FEEDBACK_PER_CALLER = 100_000
#: Feedback rows over all callers and models; past it new feedback is refused, not stored.
MAX_FEEDBACK = 500_000
BUSY_TIMEOUT_S = 5.0


class FeedbackFull(Exception):
    """The feedback table holds its maximum: refuse the call (nothing of it is stored)."""

# NOTE: the same scheme as the registry (PRAGMA user_version, append-only), in its own file:
# answers are written thousands of times a second and are disposable, while the registry is
# small, precious, and polled by every process; sharing one write lock would couple the two.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE answers (
            id INTEGER PRIMARY KEY,
            model TEXT NOT NULL,
            request_id TEXT NOT NULL,
            version TEXT NOT NULL,
            code TEXT NOT NULL,
            at REAL NOT NULL,
            latency_s REAL NOT NULL,
            kind INTEGER,
            predicted REAL
        )""",
        "CREATE INDEX answers_model_at ON answers (model, at)",
        "CREATE INDEX answers_request ON answers (model, request_id)",
        """CREATE TABLE feedback (
            model TEXT NOT NULL,
            request_id TEXT NOT NULL,
            truth REAL NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (model, request_id)
        )""",
        "CREATE INDEX feedback_model_at ON feedback (model, at)",
    ),
    (
        # Who sent each truth, so one caller's rows are capped without touching another's.
        "ALTER TABLE feedback ADD COLUMN subject TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX feedback_subject ON feedback (subject, model, at)",
    ),
]


def answers_path(registry_path: Path) -> Path:
    """Where the answers live: `answers.db` in the registry's folder."""
    return Path(registry_path).parent / "answers.db"


def _create_private(path: Path) -> None:
    """Create the file for its owner only: request ids and predictions are the callers' data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


class AnswerStore:
    """One connection to `answers.db`; use it from one thread at a time."""

    def __init__(self, path: Path, keep: int = KEEP_PER_MODEL, create: bool = True,
                 max_answers: int = MAX_ANSWERS, per_caller: int = FEEDBACK_PER_CALLER,
                 max_feedback: int = MAX_FEEDBACK) -> None:
        if create:
            _create_private(Path(path))
        elif not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no answers recorded yet (no such file)")
        self.keep = keep
        self.max_answers = max_answers
        self.per_caller = per_caller
        self.max_feedback = max_feedback
        # NOTE: prune a model after this many new rows, not after every batch: the pruning query
        # walks the model's newest `keep` index entries.
        self.prune_every = max(1000, keep // 10)
        self._since_prune: dict[str, int] = {}
        self.conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        # NOTE: answers are telemetry: losing the last transaction on power loss is acceptable,
        # an fsync per batch is not.
        self.conn.execute("PRAGMA synchronous = NORMAL")
        migrate(self.conn, MIGRATIONS)

    def __enter__(self) -> AnswerStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def write(self, rows: Sequence[AnswerRow]) -> None:
        """Insert answers in one transaction, then prune the models that grew past their due."""
        if not rows:
            return
        with self._transaction():
            self.conn.executemany(
                "INSERT INTO answers (model, request_id, version, code, at, latency_s, kind, "
                "predicted) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            # NOTE: ids only grow, so the oldest answers of all models are an id range; deleted
            # rows leave gaps, so at most `max_answers` stay.
            self.conn.execute("DELETE FROM answers WHERE id <= (SELECT MAX(id) FROM answers) - ?",
                              (self.max_answers,))
        for row in rows:
            # NOTE: a model seen first here starts at its due, so old rows are pruned at start.
            self._since_prune[row[0]] = self._since_prune.get(row[0], self.prune_every) + 1
        for model, count in list(self._since_prune.items()):
            if count >= self.prune_every:
                self.prune(model)
                self._since_prune[model] = 0

    def prune(self, model: str) -> None:
        """Keep the newest `keep` answers of a model, and feedback that may still join them.

        Feedback older than the oldest answer kept can join nothing (truth comes after its
        answer), and at most the newest `keep` feedback rows stay, so bogus ids cannot pile up.
        """
        with self._transaction():
            self.conn.execute(
                "DELETE FROM answers WHERE model = ? AND at < (SELECT at FROM answers "
                "WHERE model = ? ORDER BY at DESC LIMIT 1 OFFSET ?)", (model, model, self.keep - 1))
            self.conn.execute(
                "DELETE FROM feedback WHERE model = ? AND (at < (SELECT MIN(at) FROM answers "
                "WHERE model = ?) OR at < (SELECT at FROM feedback WHERE model = ? "
                "ORDER BY at DESC LIMIT 1 OFFSET ?))", (model, model, model, self.keep - 1))

    def add_feedback(self, model: str, items: Sequence[tuple[str, float]],
                     at: float | None = None, subject: str = "") -> tuple[int, int]:
        """Store the truth of each request id (a later truth replaces an earlier one).

        Returns (recorded, unmatched): how many ids have no answer here yet. FeedbackFull when
        the table would pass `max_feedback`; the caller's oldest rows past `per_caller` go.
        """
        now = time.time() if at is None else at
        recorded = unmatched = 0
        with self._transaction():
            for request_id, truth in items:
                self.conn.execute(
                    "INSERT OR REPLACE INTO feedback (model, request_id, truth, at, subject) "
                    "VALUES (?, ?, ?, ?, ?)", (model, request_id, truth, now, subject))
                recorded += 1
                found = self.conn.execute(
                    "SELECT 1 FROM answers WHERE model = ? AND request_id = ? LIMIT 1",
                    (model, request_id)).fetchone()
                unmatched += found is None
            self.conn.execute(
                "DELETE FROM feedback WHERE rowid IN (SELECT rowid FROM feedback WHERE "
                "subject = ? AND model = ? ORDER BY at DESC, rowid DESC LIMIT -1 OFFSET ?)",
                (subject, model, self.per_caller))
            # NOTE: counted after the caller's own oldest went, so a caller replacing its rows
            # is never refused; raising rolls the whole call back.
            (total,) = self.conn.execute("SELECT COUNT(*) FROM feedback").fetchone()
            if total > self.max_feedback:
                raise FeedbackFull(f"{self.max_feedback} feedback rows are stored, the most "
                                   "this gateway keeps")
        return recorded, unmatched

    def outcomes(self, model: str, since: float) -> list[tuple[str, str, float]]:
        """(version, code, latency_s) of every answer of the model recorded since `since`."""
        return self.conn.execute(
            "SELECT version, code, latency_s FROM answers WHERE model = ? AND at >= ?",
            (model, since)).fetchall()

    def labelled(self, model: str, since: float) -> list[tuple[str, int, float, float]]:
        """(version, kind, predicted, truth) of each successful answer since `since` with truth.

        A request id answered twice (a client reusing ids) counts once, with its latest answer.
        """
        return self.conn.execute(
            "SELECT a.version, a.kind, a.predicted, f.truth FROM feedback f "
            "JOIN answers a ON a.id = (SELECT MAX(id) FROM answers "
            "WHERE model = f.model AND request_id = f.request_id) "
            "WHERE f.model = ? AND a.at >= ? AND a.code = 'OK' AND a.predicted IS NOT NULL",
            (model, since)).fetchall()

    def _transaction(self) -> _Transaction:
        return _Transaction(self.conn)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error (the connection is in autocommit)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
