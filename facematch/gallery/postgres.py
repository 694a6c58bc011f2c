"""The gallery backend for many nodes: PostgreSQL with pgvector, one database for every node.

Each process opens its own connections, one per thread, after it is forked; a broken connection
is dropped and the next call reconnects. Connecting times out after ``CONNECT_TIMEOUT_S`` and
every statement after ``STATEMENT_TIMEOUT_MS`` (the server cancels it). A server that stops
answering altogether (stopped, frozen, cut off) enforces nothing, and its kernel keeps the
connection open, so every call also has a deadline of its own on the client: connecting,
migrating and its transaction together wait at most ``CALL_TIMEOUT_S`` on the database
(``deadline.DeadlineConnection``); past it the connection is closed and the call raises
``GalleryUnavailable``, and the thread's next call opens a new connection. A background index
build has ``BUILD_TIMEOUT_S``. TCP keepalives and ``tcp_user_timeout`` (``KEEPALIVES``) end a
TCP connection whose peer is cut off by the network, which matters for the long index build.

Embeddings are ``vector(512)`` columns. Search runs in the database, so every node sees every
committed write at once. A gallery below ``INDEX_FROM`` faces is searched exactly (a scan of
its rows, about as fast as the index at that size); when it reaches ``INDEX_FROM``, a background
thread builds an HNSW index on cosine distance for that gallery alone (a partial index,
``WHERE gallery = ...``, built ``CONCURRENTLY``, so writes go on), and from then on searches use
it with ``hnsw.ef_search`` set per query for recall. A deleted row is gone from every query at
once; its bytes leave the table's pages when (auto)vacuum reclaims them (``VACUUM``; ``VACUUM FULL``
rewrites the table) and leave the index when vacuum cleans it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from facematch.errors import GalleryUnavailable
from facematch.gallery.audit import AuditRetention
from facematch.gallery.deadline import DeadlineConnection
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

CONNECT_TIMEOUT_S = 2
STATEMENT_TIMEOUT_MS = 5000
#: The longest one call waits on the database, connecting and migrating included: a little over
#: the statement timeout, so a slow statement ends with the server's cancel (the connection
#: stays), and only a server that does not answer at all meets the deadline.
CALL_TIMEOUT_S = 6.0
#: The deadline of a background index build (1,000,000 faces took 65 min on a loaded 2-core
#: machine: docs/gallery.md, "Speed and size"); a build past it fails and is tried again later.
BUILD_TIMEOUT_S = 4 * 3600
#: libpq's TCP settings (ignored on unix sockets; the URL's own values win): a connection whose
#: peer stops acknowledging, as in a network partition, breaks after about 30 s even while idle
#: or waiting on a long statement.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 4,
    "tcp_user_timeout": 30_000,
}
SCHEMA_VERSION = 3
#: A gallery gets its HNSW index at this many faces; below it, exact search is fast enough.
INDEX_FROM = 10_000
#: ``hnsw.ef_search`` per query (candidates the index visits): recall against speed.
EF_SEARCH = 100
#: HNSW graph degree and build-time candidate list (pgvector's defaults, measured enough for
#: recall at 1 of 0.99 at 1,000,000 faces: docs, "Speed and size").
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
#: Memory an index build may use (a build whose graph fits in it is many times faster).
BUILD_MEMORY = "1GB"
_MIGRATION_LOCK = 0x6661636D  # an advisory lock id: one node migrates at a time

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE EXTENSION IF NOT EXISTS vector",
        'CREATE TABLE galleries (id text COLLATE "C" PRIMARY KEY, model text, '
        "faces integer NOT NULL DEFAULT 0, subjects integer NOT NULL DEFAULT 0, "
        "created double precision NOT NULL)",
        'CREATE TABLE subjects (gallery text COLLATE "C" NOT NULL REFERENCES galleries (id), '
        'id text COLLATE "C" NOT NULL, name text, metadata text, '
        "faces integer NOT NULL DEFAULT 0, created double precision NOT NULL, "
        "updated double precision NOT NULL, PRIMARY KEY (gallery, id))",
        "CREATE TABLE faces (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        'gallery text COLLATE "C" NOT NULL, subject text COLLATE "C" NOT NULL, '
        f"model text NOT NULL, vector vector({EMBEDDING_DIM}) NOT NULL, "
        "box_x1 double precision, box_y1 double precision, box_x2 double precision, "
        "box_y2 double precision, probability double precision, image_width integer, "
        "image_height integer, created double precision NOT NULL, "
        "FOREIGN KEY (gallery, subject) REFERENCES subjects (gallery, id))",
        # inline, uncompressed: 2 KB vectors would otherwise go to TOAST, slowing every scan
        "ALTER TABLE faces ALTER COLUMN vector SET STORAGE PLAIN",
        "CREATE INDEX faces_by_subject ON faces (gallery, subject)",
    ),
    # 2: the change counters (as SQLite's) and whether a gallery has its HNSW index
    (
        "ALTER TABLE galleries ADD COLUMN token bigint NOT NULL DEFAULT 0, "
        "ADD COLUMN generation bigint NOT NULL DEFAULT 0, "
        "ADD COLUMN deletions bigint NOT NULL DEFAULT 0, "
        "ADD COLUMN indexed boolean NOT NULL DEFAULT false",
        "UPDATE galleries SET token = floor(random() * 4e18)::bigint",
    ),
    # 3: the audit trail (sql's docstring): ids only, never a vector
    (
        "CREATE TABLE audit (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "at double precision NOT NULL, key text NOT NULL, action text NOT NULL, "
        'gallery text COLLATE "C" NOT NULL, subject text, face text, outcome text NOT NULL)',
        "CREATE INDEX audit_by_gallery ON audit (gallery, id)",
        "CREATE INDEX audit_by_time ON audit (at)",
    ),
)


def migrate(connection: psycopg.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema forward to ``target`` in one transaction (one node at a time); the
    version it was at. A database newer than this code is refused (``GalleryUnavailable``)."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        current = migrate_schema(connection.execute, MIGRATIONS, target, "%s")
    return current


def index_name(gallery: str) -> str:
    """The HNSW index of one gallery (a hash: gallery ids are longer than PostgreSQL names)."""
    return "faces_hnsw_" + hashlib.sha256(gallery.encode()).hexdigest()[:20]


def _vector_text(vector: np.ndarray) -> str:
    return "[" + ",".join(map(repr, vector.astype(np.float32).tolist())) + "]"


class PostgresGalleryStore(SqlGalleryStore):
    """``GalleryStore`` on PostgreSQL with pgvector (the schema is created on first use)."""

    lock_suffix = " FOR UPDATE"

    def __init__(
        self,
        url: str,
        limits: StoreLimits | None = None,
        index_from: int = INDEX_FROM,
        ef_search: int = EF_SEARCH,
        build_memory: str = BUILD_MEMORY,
        hnsw_m: int = HNSW_M,
        hnsw_ef_construction: int = HNSW_EF_CONSTRUCTION,
        retention: AuditRetention | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(limits or StoreLimits(), retention, clock)
        if not 1 <= ef_search <= 1000 or not re.fullmatch(r"[1-9][0-9]*[kMG]B", build_memory):
            raise ValueError("ef_search must be 1 to 1000 and build_memory like '1GB'")
        self.url = url
        self.index_from = index_from  # faces from which a gallery gets its HNSW index
        self.ef_search = ef_search  # hnsw.ef_search of indexed searches (at least)
        self.build_memory = build_memory  # maintenance_work_mem of an index build
        self.hnsw_m = int(hnsw_m)  # the index's graph degree (pgvector: 2..100)
        self.hnsw_ef_construction = int(hnsw_ef_construction)  # build candidates (4..1000)
        self._pid = -1
        self._reset()

    def _reset(self) -> None:
        """Forget this process's connections (after a fork, or at first use)."""
        self._pid = os.getpid()
        self._local = threading.local()
        self._connections: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._migrated = False
        self._building: set[str] = set()

    def _open(self, deadline: float) -> DeadlineConnection:
        """A new connection whose waits end at ``deadline`` (connecting: ``CONNECT_TIMEOUT_S``)."""
        given = conninfo_to_dict(self.url)
        connection = DeadlineConnection.connect(
            self.url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
            f"-c lock_timeout={STATEMENT_TIMEOUT_MS}",
            application_name="facematch-gallery",
            **{key: value for key, value in KEEPALIVES.items() if key not in given},
        )
        connection.deadline = deadline
        return connection

    def _connect(self, deadline: float) -> DeadlineConnection:
        """This thread's connection, opened (and the schema migrated) if it has none, with its
        waits ending at ``deadline``."""
        if os.getpid() != self._pid:
            self._reset()  # inherited connections are dropped unused, never closed here
        connection = getattr(self._local, "connection", None)
        if connection is not None and not connection.closed:
            connection.deadline = deadline
            return connection
        return self._adopt(self._open(deadline), migrate)

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with self._lock:
                if connection in self._connections:
                    self._connections.remove(connection)
            connection.close()

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Db]:
        try:
            connection = self._connect(time.monotonic() + CALL_TIMEOUT_S)
            with connection.transaction(), connection.cursor() as cursor:
                yield Db(cursor, "%s")
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            self._drop_connection()
            log.warning("the gallery database is unavailable: %s", _reason(error))
            raise GalleryUnavailable("the gallery database is unavailable") from error

    def _vector_placeholder(self) -> str:
        return "?::vector"

    def _encode_vector(self, vector: np.ndarray) -> str:
        return _vector_text(vector)

    def _vector_column(self) -> str:
        return "vector::real[]"

    def _decode_vectors(self, rows: list) -> np.ndarray:
        return np.array([row[0] for row in rows], dtype=np.float32).reshape(-1, EMBEDDING_DIM)

    def _after_gallery_deleted(self, db: Db, gallery: str) -> None:
        db.run(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(index_name(gallery))))

    # --- the HNSW index --------------------------------------------------------------------

    def _after_add(self, gallery: str, faces: int) -> None:
        """Start building the gallery's index in the background once it is large enough."""
        if faces < self.index_from:
            return
        with self._transaction(write=False) as db:
            faces, indexed = db.one("SELECT faces, indexed FROM galleries WHERE id = ?", (gallery,))
        if indexed or faces < self.index_from:
            return
        with self._lock:
            if gallery in self._building:
                return
            self._building.add(gallery)
        threading.Thread(
            target=self.build_index, args=(gallery,), name="gallery-index", daemon=True
        ).start()

    def build_index(self, gallery: str) -> bool:
        """Build one gallery's HNSW index now, in this thread (one node at a time; writes go on
        meanwhile), and mark the gallery indexed. True when this call built it or found it
        built; False when another node is building it or the build failed (logged)."""
        name = index_name(gallery)
        lock = int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)
        try:
            with self._open(time.monotonic() + BUILD_TIMEOUT_S) as connection:
                (locked,) = connection.execute(
                    "SELECT pg_try_advisory_lock(%s)", (lock,)
                ).fetchone()
                if not locked:
                    return False
                connection.execute("SET statement_timeout = 0")
                connection.execute(
                    sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(self.build_memory))
                )
                connection.execute(
                    sql.SQL(
                        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON faces "
                        "USING hnsw (vector vector_cosine_ops) WITH (m = {}, ef_construction = {}) "
                        "WHERE gallery = {}"
                    ).format(
                        sql.Identifier(name),
                        self.hnsw_m,
                        self.hnsw_ef_construction,
                        sql.Literal(gallery),
                    )
                )
                connection.execute("ANALYZE faces")
                connection.execute("UPDATE galleries SET indexed = true WHERE id = %s", (gallery,))
                return True
        except psycopg.Error as error:
            log.warning("building the search index of a gallery failed: %s", _reason(error))
            return False
        finally:
            with self._lock:
                self._building.discard(gallery)

    # --- search ----------------------------------------------------------------------------

    def _query(self, gallery: str, vector, model: str, k: int, per_subject: bool):
        check_id("gallery", gallery)
        check_model(model)
        check_k(k)
        query = _vector_text(check_vector(vector))
        where = sql.SQL("gallery = {} AND model = {}").format(
            sql.Literal(gallery), sql.Literal(model)
        )
        with self._transaction(write=False) as db:
            faces = self._search_target(db, gallery, model)
            if faces == 0:
                return []
            (indexed,) = db.one("SELECT indexed FROM galleries WHERE id = ?", (gallery,))
            if not indexed and per_subject:
                statement = sql.SQL(
                    "SELECT subject, id, distance FROM (SELECT DISTINCT ON (subject) subject, id, "
                    "vector <=> %s::vector AS distance FROM faces WHERE {} "
                    "ORDER BY subject, distance, id) best ORDER BY distance, id LIMIT %s"
                ).format(where)
                return db.all(statement, (query, k))
            limit = k
            if indexed:
                limit = max(4 * k, self.ef_search) if per_subject else k
                ef_search = min(max(self.ef_search, limit), 1000)  # pgvector's maximum
                db.run(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(ef_search))
                db.run("SET LOCAL enable_sort = off")  # the index scan is the plan that sorts
            statement = sql.SQL(
                "SELECT subject, id, vector <=> %s::vector AS distance FROM faces WHERE {} "
                "ORDER BY distance LIMIT %s"
            ).format(where)
            rows = db.all(statement, (query, limit))
        if per_subject:
            chosen: dict[str, tuple] = {}
            for row in rows:
                chosen.setdefault(row[0], row)
            rows = list(chosen.values())[:k]
        return rows

    def search(self, gallery: str, vector, model: str, k: int) -> list[Candidate]:
        rows = self._query(gallery, vector, model, k, per_subject=False)
        return [_candidate(row) for row in rows]

    def search_subjects(self, gallery: str, vector, model: str, k: int) -> list[Candidate]:
        rows = self._query(gallery, vector, model, k, per_subject=True)
        return [_candidate(row) for row in rows]


def _candidate(row: tuple) -> Candidate:
    subject, face, distance = row
    return Candidate(subject, str(face), min(max(float(distance), 0.0), 2.0))


def _reason(error: BaseException) -> str:
    """The first line of a database error, without the connection string."""
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:120]
