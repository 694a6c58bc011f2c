"""The gallery operations both SQL backends share: one schema shape, one transaction per write.

``SqlGalleryStore`` implements every ``GalleryStore`` method except the searches on top of a few
primitives its subclasses give (``_transaction``, ``_encode_vector``, ``_decode_vectors``), so
SQLite and PostgreSQL behave the same. Each write locks its gallery's row first (SQLite:
``BEGIN IMMEDIATE``; PostgreSQL: ``SELECT ... FOR UPDATE``), so the size limits hold under
concurrent writers, and bumps the gallery's ``generation`` (and ``deletions`` when it removes
faces) in the same transaction: a search cache compares them to know what changed.

The tables (``schema_version`` holds the version; see each backend's migrations):
``galleries(id, model, faces, subjects, token, generation, deletions, created)``,
``subjects(gallery, id, name, metadata, faces, created, updated)``,
``faces(id, gallery, subject, model, vector, box_*, probability, image_*, created)``,
``audit(id, at, key, action, gallery, subject, face, outcome)``: the audit trail (``audit``),
one row per write, added in the write's transaction, and one per decision; no foreign keys,
so a deleted gallery's events (its deletion included) stay until they expire.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from facematch.errors import GalleryFull, GalleryUnavailable, ModelMismatch, NotFound
from facematch.gallery.audit import (
    LOCAL_ACTOR,
    AuditEvent,
    AuditPage,
    AuditRetention,
    PruneSchedule,
    check_action,
    check_actor,
    check_cursor,
    encode_outcome,
)
from facematch.gallery.store import (
    Deleted,
    Face,
    FaceAdded,
    FaceSource,
    Page,
    StoreLimits,
    Subject,
    SubjectDetail,
    check_id,
    check_limit,
    check_model,
    check_name,
    check_source,
    check_vector,
    encode_metadata,
)

_SUBJECT_COLUMNS = "id, name, metadata, faces, created, updated"
_FACE_COLUMNS = (
    "id, model, box_x1, box_y1, box_x2, box_y2, probability, image_width, image_height, created"
)


class Db:
    """One transaction's statements; SQL uses ``?`` placeholders (translated per backend)."""

    def __init__(self, cursor, placeholder: str):
        self._cursor = cursor
        self._placeholder = placeholder

    def _sql(self, sql: str) -> str:
        if self._placeholder == "?" or not isinstance(sql, str):
            return sql  # composed statements (psycopg.sql) carry their own placeholders
        return sql.replace("?", self._placeholder)

    def run(self, sql: str, params: tuple = ()) -> int:
        """Execute a statement; the number of rows it changed."""
        self._cursor.execute(self._sql(sql), params)
        return self._cursor.rowcount

    def many(self, sql: str, rows: list[tuple], returning: bool = False) -> list:
        """Execute a statement once per row of parameters (pipelined where the driver can);
        with ``returning``, the first column each execution returned, in order."""
        if not returning:
            self._cursor.executemany(self._sql(sql), rows)
            return []
        if self._placeholder == "?":  # sqlite3's executemany returns no rows
            return [self.one(sql, row)[0] for row in rows]
        self._cursor.executemany(self._sql(sql), rows, returning=True)
        values = []
        while True:
            values.append(self._cursor.fetchone()[0])
            if not self._cursor.nextset():
                return values

    def one(self, sql: str, params: tuple = ()) -> tuple | None:
        self._cursor.execute(self._sql(sql), params)
        return self._cursor.fetchone()

    def all(self, sql: str, params: tuple = ()) -> list[tuple]:
        self._cursor.execute(self._sql(sql), params)
        return self._cursor.fetchall()


def face_id(value: str) -> int | None:
    """The row id a face id names, or None if it cannot name one (checked as an id first)."""
    check_id("face", value)
    return int(value) if value.isdigit() and len(value) <= 18 else None


def migrate_schema(execute, migrations: Sequence[Sequence[str]], target: int, param: str) -> int:
    """Run the ``migrations`` (one list of statements per version) that bring the schema from
    its recorded version to ``target``, through ``execute(sql, params)`` inside the caller's
    transaction; the version it was at. A database newer than this code is refused
    (``GalleryUnavailable``); no migration ever drops data."""
    execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
    row = execute("SELECT version FROM schema_version").fetchone()
    current = row[0] if row else 0
    if current > len(migrations):
        raise GalleryUnavailable(
            f"the gallery database has schema version {current}; this facematch knows "
            f"{len(migrations)} (upgrade facematch)"
        )
    for version in range(current + 1, target + 1):
        for statement in migrations[version - 1]:
            execute(statement)
    if row is None:
        execute(f"INSERT INTO schema_version (version) VALUES ({param})", (target,))
    elif target > current:
        execute(f"UPDATE schema_version SET version = {param}", (target,))
    return current


class SqlGalleryStore:
    """The shared operations; subclasses provide the connection, the vector encoding and the
    searches."""

    #: appended to the statement that locks a gallery's row (PostgreSQL: " FOR UPDATE")
    lock_suffix = ""

    def __init__(
        self,
        limits: StoreLimits,
        retention: AuditRetention | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.limits = limits
        self.clock = clock  # the audit's times (injectable: retention tests move it)
        self._pruning = PruneSchedule(retention or AuditRetention(), clock)

    # --- what a backend provides ---------------------------------------------------------

    def _transaction(self, write: bool) -> contextlib.AbstractContextManager[Db]:
        """A ``Db`` in one transaction, committed on success and rolled back on any error;
        database errors leave it as ``GalleryUnavailable``."""
        raise NotImplementedError

    def _insert_face_sql(self) -> str:
        """The statement that stores one face, returning its id (rows: ``_face_row``)."""
        return (
            "INSERT INTO faces (gallery, subject, model, vector, box_x1, box_y1, box_x2, "
            "box_y2, probability, image_width, image_height, created) "
            "VALUES (?, ?, ?, " + self._vector_placeholder() + ", ?, ?, ?, ?, ?, ?, ?, ?) "
            "RETURNING id"
        )

    def _face_row(
        self, gallery: str, subject: str, model: str, vector, source: FaceSource, now: float
    ) -> tuple:
        """The parameters of ``_insert_face_sql`` for one face."""
        return (gallery, subject, model, self._encode_vector(vector), *_source_row(source), now)

    def _encode_vector(self, vector: np.ndarray) -> Any:
        raise NotImplementedError

    def _vector_placeholder(self) -> str:
        """The placeholder expression of a vector parameter (PostgreSQL casts it)."""
        return "?"

    def _vector_column(self) -> str:
        """The select expression that reads ``faces.vector`` in ``_decode_vectors``' form."""
        raise NotImplementedError

    def _decode_vectors(self, rows: list) -> np.ndarray:
        raise NotImplementedError

    def _reset(self) -> None:
        """Forget this process's connections (``_connections``, opened by ``_pid``)."""
        raise NotImplementedError

    # --- what both backends share --------------------------------------------------------

    def _adopt(self, connection, migrate) -> Any:
        """Make ``connection`` this thread's, after bringing the schema forward once per
        process (``migrate(connection)``); a connection that fails that is closed."""
        try:
            with self._lock:
                if not self._migrated:
                    migrate(connection)
                    self._migrated = True
        except BaseException:
            connection.close()
            raise
        self._local.connection = connection
        with self._lock:
            self._connections.append(connection)
        return connection

    def health(self) -> bool:
        """Whether the database answers a trivial query now."""
        try:
            with self._transaction(write=False) as db:
                db.one("SELECT 1")
            return True
        except GalleryUnavailable:
            return False

    def close(self) -> None:
        """Close this process's connections and forget its state (the next call reconnects,
        and checks the schema again)."""
        inherited = os.getpid() != self._pid
        connections = self._connections
        self._reset()
        if not inherited:
            for connection in connections:
                connection.close()

    # --- helpers ---------------------------------------------------------------------------

    def _lock_gallery(self, db: Db, gallery: str, create: bool) -> tuple:
        """Lock the gallery's row (creating it if ``create``): ``(model, faces, subjects)``."""
        if create:
            db.run(
                "INSERT INTO galleries (id, token, created) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                (gallery, secrets.randbits(62), time.time()),
            )
        row = db.one(
            "SELECT model, faces, subjects FROM galleries WHERE id = ?" + self.lock_suffix,
            (gallery,),
        )
        if row is None:
            raise NotFound(f"gallery {gallery!r} not found")
        return row

    @staticmethod
    def _need_subject(db: Db, gallery: str, subject: str) -> tuple:
        row = db.one(
            f"SELECT {_SUBJECT_COLUMNS} FROM subjects WHERE gallery = ? AND id = ?",
            (gallery, subject),
        )
        if row is None:
            raise NotFound(f"subject {subject!r} not found in gallery {gallery!r}")
        return row

    @staticmethod
    def _need_gallery(db: Db, gallery: str) -> tuple:
        row = db.one("SELECT model, faces FROM galleries WHERE id = ?", (gallery,))
        if row is None:
            raise NotFound(f"gallery {gallery!r} not found")
        return row

    @staticmethod
    def _check_model(gallery: str, stored: str | None, faces: int, model: str) -> None:
        if faces and stored != model:
            raise ModelMismatch(
                f"gallery {gallery!r} holds embeddings of model {stored!r}, not {model!r}"
            )

    # --- writes ----------------------------------------------------------------------------

    def add_face(
        self,
        gallery: str,
        subject: str,
        vector: np.ndarray,
        model: str,
        source: FaceSource,
        *,
        actor: str = LOCAL_ACTOR,
    ) -> FaceAdded:
        check_id("gallery", gallery)
        check_id("subject", subject)
        return self.add_faces(gallery, [(subject, vector, source)], model, actor=actor)[0]

    def add_faces(
        self,
        gallery: str,
        faces: Sequence[tuple[str, np.ndarray, FaceSource]],
        model: str,
        *,
        actor: str = LOCAL_ACTOR,
        action: str = "enrol",
    ) -> list[FaceAdded]:
        check_id("gallery", gallery)
        check_model(model)
        check_actor(actor)
        if action not in ("enrol", "import"):
            raise ValueError("faces are added by an enrol or an import")
        checked = [
            (check_id("subject", subject), check_vector(vector), check_source(source))
            for subject, vector, source in faces
        ]
        if not checked:
            return []
        adding: dict[str, int] = {}
        for subject, _, _ in checked:
            adding[subject] = adding.get(subject, 0) + 1
        now = time.time()
        with self._transaction(write=True) as db:
            stored_model, count, _ = self._lock_gallery(db, gallery, create=True)
            self._check_model(gallery, stored_model, count, model)
            if count + len(checked) > self.limits.max_faces:
                raise _over_limit(f"gallery {gallery!r}", len(checked), self.limits.max_faces)
            held = self._subject_faces(db, gallery, list(adding))
            for subject, added in adding.items():
                if held.get(subject, 0) + added > self.limits.max_subject_faces:
                    limit = self.limits.max_subject_faces
                    raise _over_limit(f"subject {subject!r}", added, limit)
            new = [s for s in adding if s not in held]
            db.many(
                "INSERT INTO subjects (gallery, id, faces, created, updated) "
                "VALUES (?, ?, 0, ?, ?)",
                [(gallery, subject, now, now) for subject in new],
            )
            ids = db.many(
                self._insert_face_sql(),
                [
                    self._face_row(gallery, subject, model, vector, source, now)
                    for subject, vector, source in checked
                ],
                returning=True,
            )
            db.many(
                "UPDATE subjects SET faces = faces + ?, updated = ? WHERE gallery = ? AND id = ?",
                [(added, now, gallery, subject) for subject, added in adding.items()],
            )
            db.run(
                "UPDATE galleries SET faces = faces + ?, subjects = subjects + ?, model = ?, "
                "generation = generation + 1 WHERE id = ?",
                (len(checked), len(new), model, gallery),
            )
            added = []
            for (subject, _, _), new_id in zip(checked, ids, strict=True):
                held[subject] = held.get(subject, 0) + 1
                added.append(FaceAdded(face=str(new_id), faces=held[subject]))
            if action == "enrol":  # one event per face enrolled
                events = [
                    (subject, face.face, {"faces": face.faces})
                    for (subject, _, _), face in zip(checked, added, strict=True)
                ]
            else:  # an import's transaction: one event, its counts
                events = [(None, None, {"subjects": len(new), "faces": len(checked)})]
            self._audit(db, actor, action, gallery, events)
        self._after_add(gallery, count + len(checked))
        return added

    @staticmethod
    def _subject_faces(db: Db, gallery: str, subjects: list[str]) -> dict[str, int]:
        """How many faces each of ``subjects`` that exists holds."""
        held: dict[str, int] = {}
        for start in range(0, len(subjects), 500):
            part = subjects[start : start + 500]
            rows = db.all(
                "SELECT id, faces FROM subjects WHERE gallery = ? AND id IN ("
                + ", ".join("?" * len(part))
                + ")",
                (gallery, *part),
            )
            held.update(rows)
        return held

    def put_subject(
        self,
        gallery: str,
        subject: str,
        name: str | None,
        metadata: Any,
        *,
        actor: str = LOCAL_ACTOR,
        action: str = "update",
    ) -> Subject:
        check_id("gallery", gallery)
        check_id("subject", subject)
        check_actor(actor)
        if action not in ("update", "import"):
            raise ValueError("a subject is written by an update or an import")
        name = check_name(name)
        text = encode_metadata(metadata)
        now = time.time()
        with self._transaction(write=True) as db:
            self._lock_gallery(db, gallery, create=True)
            created = db.one(
                "INSERT INTO subjects (gallery, id, name, metadata, faces, created, updated) "
                "VALUES (?, ?, ?, ?, 0, ?, ?) ON CONFLICT (gallery, id) DO NOTHING RETURNING id",
                (gallery, subject, name, text, now, now),
            )
            if created:
                db.run("UPDATE galleries SET subjects = subjects + 1 WHERE id = ?", (gallery,))
            else:
                db.run(
                    "UPDATE subjects SET name = ?, metadata = ?, updated = ? "
                    "WHERE gallery = ? AND id = ?",
                    (name, text, now, gallery, subject),
                )
            row = self._need_subject(db, gallery, subject)
            self._audit(db, actor, action, gallery, [(subject, None, {"created": bool(created)})])
        return _subject(row)

    def delete_face(
        self, gallery: str, subject: str, face: str, *, actor: str = LOCAL_ACTOR
    ) -> Deleted:
        check_id("gallery", gallery)
        check_id("subject", subject)
        check_actor(actor)
        row_id = face_id(face)
        with self._transaction(write=True) as db:
            self._lock_gallery(db, gallery, create=False)
            self._need_subject(db, gallery, subject)
            removed = row_id is not None and db.run(
                "DELETE FROM faces WHERE id = ? AND gallery = ? AND subject = ?",
                (row_id, gallery, subject),
            )
            if not removed:
                raise NotFound(f"face {face!r} not found for subject {subject!r}")
            db.run(
                "UPDATE subjects SET faces = faces - 1, updated = ? WHERE gallery = ? AND id = ?",
                (time.time(), gallery, subject),
            )
            self._count_deleted(db, gallery, subjects=0, faces=1)
            self._audit(db, actor, "delete_face", gallery, [(subject, face, {"faces": 1})])
        self._after_erasure()
        return Deleted(faces=1)

    def delete_subject(self, gallery: str, subject: str, *, actor: str = LOCAL_ACTOR) -> Deleted:
        check_id("gallery", gallery)
        check_id("subject", subject)
        check_actor(actor)
        with self._transaction(write=True) as db:
            self._lock_gallery(db, gallery, create=False)
            self._need_subject(db, gallery, subject)
            faces = db.run(
                "DELETE FROM faces WHERE gallery = ? AND subject = ?", (gallery, subject)
            )
            db.run("DELETE FROM subjects WHERE gallery = ? AND id = ?", (gallery, subject))
            self._count_deleted(db, gallery, subjects=1, faces=faces)
            outcome = {"subjects": 1, "faces": faces}
            self._audit(db, actor, "delete_subject", gallery, [(subject, None, outcome)])
        self._after_erasure()
        return Deleted(subjects=1, faces=faces)

    def delete_gallery(self, gallery: str, *, actor: str = LOCAL_ACTOR) -> Deleted:
        check_id("gallery", gallery)
        check_actor(actor)
        with self._transaction(write=True) as db:
            self._lock_gallery(db, gallery, create=False)
            faces = db.run("DELETE FROM faces WHERE gallery = ?", (gallery,))
            subjects = db.run("DELETE FROM subjects WHERE gallery = ?", (gallery,))
            db.run("DELETE FROM galleries WHERE id = ?", (gallery,))
            self._after_gallery_deleted(db, gallery)
            outcome = {"subjects": subjects, "faces": faces}
            self._audit(db, actor, "delete_gallery", gallery, [(None, None, outcome)])
        self._after_erasure()
        return Deleted(galleries=1, subjects=subjects, faces=faces)

    def _after_gallery_deleted(self, db: Db, gallery: str) -> None:
        """A backend's clean-up inside the deleting transaction (PostgreSQL: its index)."""

    def _after_add(self, gallery: str, faces: int) -> None:
        """A backend's step after a face was added and ``gallery`` holds ``faces`` faces."""

    def _after_erasure(self) -> None:
        """A backend's step after a delete committed, to get rid of the deleted bytes."""

    # --- the audit trail -----------------------------------------------------------------------

    def _audit(
        self, db: Db, actor: str, action: str, gallery: str, events: list[tuple[Any, Any, Any]]
    ) -> None:
        """Add ``(subject, face, outcome)`` events to the trail in ``db``'s transaction (a
        failure rolls the write back), and delete expired events when a prune is due."""
        at = self.clock()
        db.many(
            "INSERT INTO audit (at, key, action, gallery, subject, face, outcome) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (at, actor, action, gallery, subject, face, encode_outcome(outcome))
                for subject, face, outcome in events
            ],
        )
        cutoff = self._pruning.due()
        if cutoff is not None:
            db.run("DELETE FROM audit WHERE at < ?", (cutoff,))

    def record(
        self,
        gallery: str,
        action: str,
        outcome: Any,
        *,
        actor: str = LOCAL_ACTOR,
        subject: str | None = None,
        face: str | None = None,
    ) -> None:
        """Add one event that no write carries (a decision, an export) in its own transaction."""
        check_id("gallery", gallery)
        check_action(action)
        check_actor(actor)
        if subject is not None:
            check_id("subject", subject)
        if face is not None:
            check_id("face", face)
        with self._transaction(write=True) as db:
            self._audit(db, actor, action, gallery, [(subject, face, outcome)])

    def audit_events(self, gallery: str, limit: int = 100, after: str | None = None) -> AuditPage:
        check_id("gallery", gallery)
        check_limit(limit)
        start = check_cursor(after)
        with self._transaction(write=False) as db:
            rows = db.all(
                "SELECT id, at, key, action, gallery, subject, face, outcome FROM audit "
                "WHERE gallery = ? AND id > ? ORDER BY id LIMIT ?",
                (gallery, start, limit + 1),
            )
        events = tuple(_event(row) for row in rows[:limit])
        return AuditPage(events=events, next=str(rows[limit - 1][0]) if len(rows) > limit else None)

    @staticmethod
    def _count_deleted(db: Db, gallery: str, subjects: int, faces: int) -> None:
        db.run(
            "UPDATE galleries SET faces = faces - ?, subjects = subjects - ?, "
            "generation = generation + 1, deletions = deletions + 1 WHERE id = ?",
            (faces, subjects, gallery),
        )

    # --- reads -----------------------------------------------------------------------------

    def get_subject(self, gallery: str, subject: str) -> SubjectDetail:
        check_id("gallery", gallery)
        check_id("subject", subject)
        with self._transaction(write=False) as db:
            self._need_gallery(db, gallery)
            row = self._need_subject(db, gallery, subject)
            faces = db.all(
                f"SELECT {_FACE_COLUMNS} FROM faces WHERE gallery = ? AND subject = ? ORDER BY id",
                (gallery, subject),
            )
        return SubjectDetail(subject=_subject(row), faces=tuple(_face(f) for f in faces))

    def list_subjects(self, gallery: str, limit: int = 100, after: str | None = None) -> Page:
        check_id("gallery", gallery)
        check_limit(limit)
        if after is not None:
            check_id("cursor", after)
        with self._transaction(write=False) as db:
            self._need_gallery(db, gallery)
            rows = db.all(
                f"SELECT {_SUBJECT_COLUMNS} FROM subjects WHERE gallery = ? AND id > ? "
                "ORDER BY id LIMIT ?",
                (gallery, after or "", limit + 1),
            )
        subjects = tuple(_subject(row) for row in rows[:limit])
        return Page(subjects=subjects, next=subjects[-1].subject if len(rows) > limit else None)

    def subject_vectors(self, gallery: str, subject: str, model: str) -> np.ndarray:
        check_id("gallery", gallery)
        check_id("subject", subject)
        check_model(model)
        with self._transaction(write=False) as db:
            stored_model, faces = self._need_gallery(db, gallery)
            self._check_model(gallery, stored_model, faces, model)
            self._need_subject(db, gallery, subject)
            rows = db.all(
                f"SELECT {self._vector_column()} FROM faces "
                "WHERE gallery = ? AND subject = ? AND model = ? ORDER BY id",
                (gallery, subject, model),
            )
        return self._decode_vectors(rows)

    def gallery_size(self, gallery: str) -> int:
        check_id("gallery", gallery)
        with self._transaction(write=False) as db:
            row = db.one("SELECT faces FROM galleries WHERE id = ?", (gallery,))
        return row[0] if row else 0

    def _search_target(self, db: Db, gallery: str, model: str) -> int:
        """Check the gallery exists and holds ``model``'s embeddings; its face count."""
        stored_model, faces = self._need_gallery(db, gallery)
        self._check_model(gallery, stored_model, faces, model)
        return faces


def _source_row(source: FaceSource) -> tuple:
    """The face columns of a source: box (4), probability, image width and height."""
    box = source.box or (None, None, None, None)
    return (
        *(None if v is None else float(v) for v in box),
        None if source.probability is None else float(source.probability),
        source.image_width,
        source.image_height,
    )


def _subject(row: tuple) -> Subject:
    subject, name, metadata, faces, created, updated = row
    return Subject(
        subject=subject,
        name=name,
        metadata=None if metadata is None else json.loads(metadata),
        faces=faces,
        created=created,
        updated=updated,
    )


def _face(row: tuple) -> Face:
    face, model, x1, y1, x2, y2, probability, width, height, created = row
    box = None if x1 is None else (x1, y1, x2, y2)
    return Face(
        face=str(face),
        model=model,
        source=FaceSource(box=box, probability=probability, image_width=width, image_height=height),
        created=created,
    )


def _event(row: tuple) -> AuditEvent:
    _, at, key, action, gallery, subject, face, outcome = row
    return AuditEvent(at, key, action, gallery, subject, face, json.loads(outcome))


def _over_limit(what: str, adding: int, limit: int) -> GalleryFull:
    """The refusal of adding ``adding`` faces to ``what`` past its ``limit`` of faces."""
    reach = "holds its limit" if adding == 1 else "would pass its limit"
    return GalleryFull(f"{what} {reach} of {limit} faces")
