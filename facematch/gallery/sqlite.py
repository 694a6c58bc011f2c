"""The default gallery backend: one SQLite file, shared by every worker and process on a machine.

Each process opens its own connections, one per thread, after it is forked (a connection never
crosses a fork: one inherited from a parent is left alone and a new one opened). The database
runs in WAL mode (readers never wait for the writer), with a 5 s busy timeout for writers and
``secure_delete`` on, so a deleted embedding's bytes are overwritten in the file; after a delete
the WAL is checkpointed and truncated, so no copy of them stays in the log either.

Search is exact, on an in-memory matrix per gallery in each process (``search``). Every
search first reads the gallery's row (one small query): if its ``generation`` moved, the rows
written since are appended; if faces were deleted (``deletions`` moved) or the gallery was
re-created (``token``), the matrix is reloaded. So a face stored by any worker is searched by
every worker at once, and a deleted one is never returned again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facematch.errors import GalleryUnavailable
from facematch.gallery.audit import AuditRetention
from facematch.gallery.search import FaceMatrix
from facematch.gallery.sql import Db, SqlGalleryStore, migrate_schema
from facematch.gallery.store import (
    EMBEDDING_DIM,
    Candidate,
    StoreLimits,
    check_id,
    check_k,
    check_model,
    check_vector,
)

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
LOAD_SLICE = 16_384  # faces read at a time into a search matrix
#: What an unreachable, locked, unreadable or corrupt file raises.
_UNAVAILABLE = (sqlite3.OperationalError, sqlite3.DatabaseError)
SCHEMA_VERSION = 4

#: Forward migrations: MIGRATIONS[v - 1] takes the schema from version v - 1 to v. They only
#: create and add; a migration never drops data.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE galleries (id TEXT PRIMARY KEY, model TEXT, "
        "faces INTEGER NOT NULL DEFAULT 0, subjects INTEGER NOT NULL DEFAULT 0, "
        "created REAL NOT NULL)",
        "CREATE TABLE subjects (gallery TEXT NOT NULL REFERENCES galleries (id), "
        "id TEXT NOT NULL, name TEXT, metadata TEXT, faces INTEGER NOT NULL DEFAULT 0, "
        "created REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY (gallery, id))",
        "CREATE TABLE faces (id INTEGER PRIMARY KEY AUTOINCREMENT, gallery TEXT NOT NULL, "
        "subject TEXT NOT NULL, model TEXT NOT NULL, vector BLOB NOT NULL, "
        "box_x1 REAL, box_y1 REAL, box_x2 REAL, box_y2 REAL, probability REAL, "
        "image_width INTEGER, image_height INTEGER, created REAL NOT NULL, "
        "FOREIGN KEY (gallery, subject) REFERENCES subjects (gallery, id))",
        "CREATE INDEX faces_by_subject ON faces (gallery, subject)",
    ),
    # 2: the counters the per-process search matrices compare to know what changed
    (
        "ALTER TABLE galleries ADD COLUMN token INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE galleries ADD COLUMN generation INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE galleries ADD COLUMN deletions INTEGER NOT NULL DEFAULT 0",
        "UPDATE galleries SET token = abs(random() >> 2)",
    ),
    # 3: a gallery's faces in id order, so a worker loads (and catches up on) a gallery's
    # matrix without sorting it (measured at 100,000 faces: 8.5 s with a sort, 1.4 s without)
    ("CREATE INDEX faces_by_gallery ON faces (gallery, id)",),
    # 4: the audit trail (sql's docstring): ids only, never a vector
    (
        "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, "
        "key TEXT NOT NULL, action TEXT NOT NULL, gallery TEXT NOT NULL, subject TEXT, "
        "face TEXT, outcome TEXT NOT NULL)",
        "CREATE INDEX audit_by_gallery ON audit (gallery, id)",
        "CREATE INDEX audit_by_time ON audit (at)",
    ),
)


def _use_wal(connection: sqlite3.Connection) -> None:
    """Put the database in WAL mode. The switch takes a lock SQLite's busy handler does not
    always wait for: connections opening one new file at once can get "database is locked"
    at once (2 runs in 60 of the concurrent-add test), so it is retried up to the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def migrate(connection: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema forward to ``target`` in one transaction; the version it was at.
    A database newer than this code is refused (``GalleryUnavailable``)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        current = migrate_schema(connection.execute, MIGRATIONS, target, "?")
        connection.execute("COMMIT")
        return current
    except BaseException:
        connection.execute("ROLLBACK")
        raise


@dataclass
class _Matrix:
    """One gallery's embeddings of one model in this process, and the counters they match."""

    token: int
    generation: int
    deletions: int
    model: str
    last_id: int = 0
    faces: FaceMatrix = field(default_factory=FaceMatrix)


class SqliteGalleryStore(SqlGalleryStore):
    """``GalleryStore`` on an SQLite file (created with its directory on first use)."""

    def __init__(
        self,
        path: str | os.PathLike,
        limits: StoreLimits | None = None,
        retention: AuditRetention | None = None,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(limits or StoreLimits(), retention, clock)
        self.path = Path(path).expanduser()
        self._pid = -1
        self._reset()

    def _reset(self) -> None:
        """Forget this process's connections and matrices (after a fork, or at first use)."""
        self._pid = os.getpid()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._matrices: dict[str, _Matrix] = {}
        self._migrated = False

    def _connect(self) -> sqlite3.Connection:
        if os.getpid() != self._pid:
            self._reset()  # inherited connections are dropped unused, never closed here
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        try:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _use_wal(connection)
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA secure_delete = ON")
            connection.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            connection.close()
            raise
        return self._adopt(connection, migrate)

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Db]:
        try:
            connection = self._connect()
            connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield Db(connection.cursor(), "?")
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except (sqlite3.DatabaseError, OSError) as error:
            if type(error) not in _UNAVAILABLE and not isinstance(error, OSError):
                raise  # a constraint or programming error: a bug, not an outage
            log.warning("the gallery database is unavailable: %s", _reason(error))
            raise GalleryUnavailable("the gallery database is unavailable") from error

    def _encode_vector(self, vector: np.ndarray) -> bytes:
        return vector.astype("<f4").tobytes()

    def _vector_column(self) -> str:
        return "vector"

    def _decode_vectors(self, rows: list) -> np.ndarray:
        data = b"".join(row[0] for row in rows)
        return np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(-1, EMBEDDING_DIM)

    def _after_erasure(self) -> None:
        """Copy the WAL into the file and truncate it, so deleted vectors leave the log too
        (best effort: a reader still running keeps the frames until the next checkpoint)."""
        try:
            self._connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError:
            pass

    # --- search ----------------------------------------------------------------------------

    def _matrix(self, gallery: str, model: str) -> _Matrix | None:
        """The gallery's up-to-date matrix in this process; None when it holds no faces."""
        with self._transaction(write=False) as db:
            faces = self._search_target(db, gallery, model)
            token, generation, deletions = db.one(
                "SELECT token, generation, deletions FROM galleries WHERE id = ?", (gallery,)
            )
            with self._lock:
                matrix = self._matrices.get(gallery)
                if matrix is None or (matrix.token, matrix.deletions, matrix.model) != (
                    token,
                    deletions,
                    model,
                ):
                    matrix = _Matrix(token, -1, deletions, model)
                    matrix.faces.reserve(faces)
                while matrix.generation != generation:
                    # in slices: a worker loading 1M faces never holds them all as rows
                    rows = db.all(
                        "SELECT id, subject, vector FROM faces "
                        "WHERE gallery = ? AND model = ? AND id > ? ORDER BY id LIMIT ?",
                        (gallery, model, matrix.last_id, LOAD_SLICE),
                    )
                    if rows:
                        vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4")
                        matrix.faces.append(
                            [r[0] for r in rows],
                            [r[1] for r in rows],
                            vectors.astype(np.float32).reshape(len(rows), EMBEDDING_DIM),
                        )
                        matrix.last_id = rows[-1][0]
                    if len(rows) < LOAD_SLICE:
                        matrix.generation = generation
                self._matrices[gallery] = matrix
        return matrix if matrix.faces.n else None

    def _nearest(self, gallery: str, vector, model: str, k: int, per_subject: bool):
        check_id("gallery", gallery)
        check_model(model)
        check_k(k)
        query = check_vector(vector)
        matrix = self._matrix(gallery, model)
        if matrix is None:
            return []
        faces = matrix.faces
        return [
            Candidate(faces.subjects[faces.owners[row]], str(faces.ids[row]), distance)
            for row, distance in faces.nearest(query, k, per_subject)
        ]

    def search(self, gallery: str, vector, model: str, k: int) -> list[Candidate]:
        return self._nearest(gallery, vector, model, k, per_subject=False)

    def search_subjects(self, gallery: str, vector, model: str, k: int) -> list[Candidate]:
        return self._nearest(gallery, vector, model, k, per_subject=True)


def _reason(error: BaseException) -> str:
    """A short reason for the log (an SQLite message or an OS error's strerror)."""
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    return str(error)[:200]
