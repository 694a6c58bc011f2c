"""The gallery store on both backends: a real SQLite file and a real PostgreSQL with pgvector.

Every test runs on both (``gallery_url`` is parametrised); a few check one backend's own
mechanism (SQLite's file bytes after an erasure, PostgreSQL's HNSW index) and say so.
"""

from __future__ import annotations

import math
import multiprocessing
import sqlite3
import threading
import time

import numpy as np
import psycopg
import pytest

from facematch.api.errors import status_of
from facematch.config import Settings
from facematch.errors import (
    GalleryFull,
    GalleryUnavailable,
    InvalidEmbedding,
    InvalidId,
    InvalidParameter,
    ModelMismatch,
    NotFound,
)
from facematch.gallery import postgres as gallery_postgres
from facematch.gallery import sqlite as gallery_sqlite
from facematch.gallery.audit import AuditRetention
from facematch.gallery.opening import open_gallery_store, store_from_settings
from facematch.gallery.store import Candidate, FaceSource, StoreLimits
from tests.servers import Postgres, wait_until

MODEL = "casia-webface"
SOURCE = FaceSource(
    box=(10.0, 20.0, 110.0, 140.0), probability=0.99, image_width=250, image_height=250
)


def unit(rows: int, seed: int = 0) -> np.ndarray:
    """``rows`` random unit vectors of 512 float32."""
    vectors = np.random.default_rng(seed).standard_normal((rows, 512)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def near(vector: np.ndarray, noise: float, seed: int = 1) -> np.ndarray:
    """A unit vector close to ``vector`` (cosine distance grows with ``noise``)."""
    moved = vector + noise * unit(1, seed)[0]
    return moved / np.linalg.norm(moved)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def gallery_url(request, tmp_path) -> str:
    """A fresh gallery database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gallery.db'}"
    return request.getfixturevalue("postgres")


@pytest.fixture
def open_store(gallery_url):
    """Open another store on the test's database (another worker or node); closed after."""
    opened = []

    def open_(limits: StoreLimits | None = None, **options):
        if options:
            store = gallery_postgres.PostgresGalleryStore(gallery_url, limits, **options)
        else:
            store = open_gallery_store(gallery_url, limits)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def gallery_store(open_store):
    return open_store()


@pytest.fixture
def query(gallery_url):
    """Run SQL directly on the test's database (``?`` placeholders); the rows."""

    def run(statement: str, params: tuple = ()) -> list[tuple]:
        if gallery_url.startswith("sqlite"):
            connection = sqlite3.connect(gallery_url.removeprefix("sqlite:///"))
            try:
                with connection:
                    return connection.execute(statement, params).fetchall()
            finally:
                connection.close()
        with psycopg.connect(gallery_url, autocommit=True) as connection:
            cursor = connection.execute(statement.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description else []

    return run


def enrol(store, gallery: str, people: dict[str, np.ndarray]) -> dict[str, str]:
    """Add each subject's rows as faces; face id -> subject."""
    owners = {}
    for subject, rows in people.items():
        for row in rows:
            owners[store.add_face(gallery, subject, row, MODEL, SOURCE).face] = subject
    return owners


# --- storing and reading --------------------------------------------------------------------


def test_add_face_creates_gallery_and_subject_and_counts_faces(gallery_store):
    vectors = unit(3)
    first = gallery_store.add_face("site", "alice", vectors[0], MODEL, SOURCE)
    second = gallery_store.add_face("site", "alice", vectors[1], MODEL, FaceSource())
    third = gallery_store.add_face("site", "bob", vectors[2], MODEL, SOURCE)
    assert (first.faces, second.faces, third.faces) == (1, 2, 1)
    assert len({first.face, second.face, third.face}) == 3
    assert gallery_store.gallery_size("site") == 3
    assert gallery_store.gallery_size("elsewhere") == 0
    detail = gallery_store.get_subject("site", "alice")
    assert detail.subject.subject == "alice" and detail.subject.faces == 2
    assert [f.face for f in detail.faces] == [first.face, second.face]
    assert detail.faces[0].source == SOURCE
    assert detail.faces[0].model == MODEL
    assert detail.faces[1].source == FaceSource()
    assert abs(detail.faces[0].created - time.time()) < 60


def test_add_faces_stores_a_batch_in_one_transaction_in_order(gallery_store):
    vectors = unit(7, seed=21)
    gallery_store.add_face("site", "alice", vectors[0], MODEL, SOURCE)
    batch = [("alice", vectors[1], FaceSource()), ("bob", vectors[2], SOURCE)]
    batch += [("carol", v, SOURCE) for v in vectors[3:6]] + [("bob", vectors[6], SOURCE)]
    added = gallery_store.add_faces("site", batch, MODEL)
    assert [a.faces for a in added] == [2, 1, 1, 2, 3, 2]
    assert len({a.face for a in added}) == 6
    assert gallery_store.gallery_size("site") == 7
    page = gallery_store.list_subjects("site")
    assert [(s.subject, s.faces) for s in page.subjects] == [("alice", 2), ("bob", 2), ("carol", 3)]
    bob = gallery_store.get_subject("site", "bob")
    assert [f.face for f in bob.faces] == [added[1].face, added[5].face]
    np.testing.assert_allclose(
        gallery_store.subject_vectors("site", "carol", MODEL), vectors[3:6], atol=1e-6
    )
    hit = gallery_store.search("site", vectors[4], MODEL, 1)[0]
    assert (hit.subject, hit.face) == ("carol", added[3].face)
    assert gallery_store.add_faces("site", [], MODEL) == []


def test_add_faces_past_a_limit_or_with_another_model_writes_nothing(open_store):
    store = open_store(StoreLimits(max_faces=6, max_subject_faces=3))
    vectors = unit(8, seed=22)
    store.add_faces("site", [("kim", vectors[0], SOURCE), ("kim", vectors[1], SOURCE)], MODEL)
    too_many = [("kim", vectors[2], SOURCE), ("lee", vectors[3], SOURCE)]
    too_many.append(("kim", vectors[4], SOURCE))
    with pytest.raises(GalleryFull, match="limit of 3 faces"):
        store.add_faces("site", too_many, MODEL)
    with pytest.raises(GalleryFull, match="limit of 6 faces"):
        store.add_faces("site", [(f"p{i}", vectors[i], SOURCE) for i in range(2, 7)], MODEL)
    with pytest.raises(ModelMismatch, match="other-model"):
        store.add_faces("site", [("lee", vectors[5], SOURCE)], "other-model")
    with pytest.raises(InvalidEmbedding):
        store.add_faces(
            "site", [("lee", vectors[5], SOURCE), ("lee", np.zeros(512), SOURCE)], MODEL
        )
    assert store.gallery_size("site") == 2
    assert [s.subject for s in store.list_subjects("site").subjects] == ["kim"]


def test_put_subject_creates_then_replaces_name_and_metadata(gallery_store):
    created = gallery_store.put_subject("site", "carol", "Carol", {"team": "blue", "n": [1, 2]})
    assert (created.name, created.metadata, created.faces) == (
        "Carol",
        {"team": "blue", "n": [1, 2]},
        0,
    )
    gallery_store.add_face("site", "carol", unit(1)[0], MODEL, SOURCE)
    updated = gallery_store.put_subject("site", "carol", None, "just text")
    assert (updated.name, updated.metadata, updated.faces) == (None, "just text", 1)
    assert updated.created == created.created and updated.updated >= created.updated
    assert gallery_store.get_subject("site", "carol").subject == updated


def test_metadata_over_4kb_or_not_json_is_refused_and_nothing_written(gallery_store):
    with pytest.raises(InvalidParameter, match="4096"):
        gallery_store.put_subject("site", "dan", None, {"x": "y" * 4100})
    with pytest.raises(InvalidParameter, match="JSON"):
        gallery_store.put_subject("site", "dan", None, {"x": float("nan")})
    with pytest.raises(InvalidParameter):
        gallery_store.put_subject("site", "dan", "n" * 257, None)
    with pytest.raises(NotFound):
        gallery_store.get_subject("site", "dan")
    assert gallery_store.put_subject("site", "dan", "é" * 256, {"x": "y" * 4000}).name == "é" * 256


def test_subject_vectors_are_the_stored_unit_vectors_oldest_first(gallery_store):
    vectors = unit(3)
    for row in vectors:
        gallery_store.add_face("site", "erin", row * 7.5, MODEL, SOURCE)  # stored normalised
    stored = gallery_store.subject_vectors("site", "erin", MODEL)
    assert stored.shape == (3, 512) and stored.dtype == np.float32
    np.testing.assert_allclose(stored, vectors, atol=1e-6)


@pytest.mark.parametrize(
    "vector",
    [np.zeros(512), np.full(512, np.nan), np.ones(511), np.ones((2, 512)), "text"],
    ids=["zeros", "nan", "short", "two-rows", "text"],
)
def test_a_vector_that_is_not_one_finite_512_embedding_is_refused(gallery_store, vector):
    with pytest.raises(InvalidEmbedding):
        gallery_store.add_face("site", "frank", vector, MODEL, SOURCE)
    assert gallery_store.gallery_size("site") == 0


@pytest.mark.parametrize("bad", ["", "a" * 129, "a/b", "a b", "é", "../x", None, 7])
def test_ids_outside_the_charset_are_refused_by_the_store(gallery_store, bad):
    vector = unit(1)[0]
    with pytest.raises(InvalidId, match="gallery"):
        gallery_store.add_face(bad, "s", vector, MODEL, SOURCE)
    with pytest.raises(InvalidId, match="subject"):
        gallery_store.add_face("g", bad, vector, MODEL, SOURCE)
    with pytest.raises(InvalidId, match="face"):
        gallery_store.delete_face("g", "s", bad)
    if bad is not None:  # None is no cursor: the first page
        with pytest.raises(InvalidId):
            gallery_store.list_subjects("g", after=bad)
    assert gallery_store.gallery_size("g") == 0


def test_longest_and_odd_valid_ids_are_accepted(gallery_store):
    gallery, subject = "G" * 128, "a.b_c-D.9"
    added = gallery_store.add_face(gallery, subject, unit(1)[0], MODEL, SOURCE)
    assert gallery_store.get_subject(gallery, subject).faces[0].face == added.face


def test_unknown_gallery_subject_or_face_is_not_found_naming_which(gallery_store):
    vector = unit(1)[0]
    with pytest.raises(NotFound, match="gallery 'nowhere'"):
        gallery_store.get_subject("nowhere", "x")
    with pytest.raises(NotFound, match="gallery 'nowhere'"):
        gallery_store.search("nowhere", vector, MODEL, 5)
    with pytest.raises(NotFound, match="gallery 'nowhere'"):
        gallery_store.list_subjects("nowhere")
    with pytest.raises(NotFound, match="gallery 'nowhere'"):
        gallery_store.delete_gallery("nowhere")
    face = gallery_store.add_face("site", "gina", vector, MODEL, SOURCE).face
    with pytest.raises(NotFound, match="subject 'nobody'"):
        gallery_store.delete_subject("site", "nobody")
    with pytest.raises(NotFound, match="subject 'nobody'"):
        gallery_store.subject_vectors("site", "nobody", MODEL)
    with pytest.raises(NotFound, match="face '999999'"):
        gallery_store.delete_face("site", "gina", "999999")
    with pytest.raises(NotFound, match="face 'abc'"):
        gallery_store.delete_face("site", "gina", "abc")
    gallery_store.put_subject("site", "hank", None, None)
    with pytest.raises(NotFound, match=f"face '{face}'"):  # another subject's face
        gallery_store.delete_face("site", "hank", face)
    assert gallery_store.gallery_size("site") == 1


# --- paging -----------------------------------------------------------------------------------


def test_list_subjects_pages_by_cursor_in_byte_order(gallery_store):
    ids = [f"p{i:03d}" for i in range(23)] + ["Zed", "_under", "a.b", "a-b", "9", "B", "b"]
    for subject in ids:
        gallery_store.put_subject("site", subject, subject.upper(), None)
    gallery_store.add_face("site", "p005", unit(1)[0], MODEL, SOURCE)
    seen, after, pages = [], None, 0
    while True:
        page = gallery_store.list_subjects("site", limit=10, after=after)
        pages += 1
        seen += [s.subject for s in page.subjects]
        if page.next is None:
            break
        assert page.next == page.subjects[-1].subject
        after = page.next
    assert seen == sorted(ids)  # code-point order, the same on both backends
    assert pages == 3
    assert gallery_store.list_subjects("site", limit=1000).next is None
    p005 = next(
        s for s in gallery_store.list_subjects("site", 1000).subjects if s.subject == "p005"
    )
    assert (p005.name, p005.faces) == ("P005", 1)
    assert gallery_store.list_subjects("site", limit=5, after="zzz").subjects == ()
    for limit in (0, 1001, "5"):
        with pytest.raises(InvalidParameter):
            gallery_store.list_subjects("site", limit=limit)


# --- search -------------------------------------------------------------------------------------


def test_search_returns_the_k_nearest_faces_by_exact_cosine_distance(gallery_store):
    vectors = unit(60, seed=3)
    people = {f"s{i}": vectors[i * 3 : i * 3 + 3] for i in range(20)}
    owners = enrol(gallery_store, "site", people)
    probe = near(vectors[31], 0.3)
    found = gallery_store.search("site", probe, MODEL, 7)
    distances = 1.0 - vectors @ probe
    order = np.argsort(distances)[:7]
    assert [c.subject for c in found] == [f"s{i // 3}" for i in order]
    np.testing.assert_allclose([c.distance for c in found], distances[order], atol=1e-5)
    assert all(owners[c.face] == c.subject for c in found)
    assert len(gallery_store.search("site", probe, MODEL, 1000)) == 60
    for k in (0, 1001, 2.0):
        with pytest.raises(InvalidParameter):
            gallery_store.search("site", probe, MODEL, k)


def test_search_subjects_gives_each_subject_once_with_its_nearest_face(gallery_store):
    vectors = unit(60, seed=4)
    people = {f"s{i}": vectors[i * 3 : i * 3 + 3] for i in range(20)}
    enrol(gallery_store, "site", people)
    probe = near(vectors[10], 0.2)
    found = gallery_store.search_subjects("site", probe, MODEL, 5)
    distances = 1.0 - vectors @ probe
    best = {f"s{i}": distances[i * 3 : i * 3 + 3].min() for i in range(20)}
    expected = sorted(best, key=best.get)[:5]
    assert [c.subject for c in found] == expected
    np.testing.assert_allclose([c.distance for c in found], [best[s] for s in expected], atol=1e-5)
    assert len(gallery_store.search_subjects("site", probe, MODEL, 100)) == 20


def test_an_empty_gallery_searches_to_nothing(gallery_store):
    gallery_store.put_subject("site", "ivy", None, None)
    assert gallery_store.search("site", unit(1)[0], MODEL, 5) == []
    assert gallery_store.search_subjects("site", unit(1)[0], MODEL, 5) == []


def test_galleries_are_separate_namespaces(gallery_store):
    vectors = unit(2)
    gallery_store.add_face("one", "same-id", vectors[0], MODEL, SOURCE)
    gallery_store.add_face("two", "same-id", vectors[1], MODEL, SOURCE)
    found = gallery_store.search("one", vectors[1], MODEL, 10)
    assert len(found) == 1 and found[0].distance > 0.5
    gallery_store.delete_gallery("one")
    assert gallery_store.get_subject("two", "same-id").subject.faces == 1


# --- models -------------------------------------------------------------------------------------


def test_another_models_embeddings_are_refused_naming_both_models(gallery_store):
    vectors = unit(3)
    gallery_store.add_face("site", "jo", vectors[0], MODEL, SOURCE)
    with pytest.raises(ModelMismatch, match=f"'{MODEL}'.*'vggface2'") as refused:
        gallery_store.add_face("site", "jo", vectors[1], "vggface2", SOURCE)
    assert status_of(refused.value) == 409 and refused.value.code == "model_mismatch"
    with pytest.raises(ModelMismatch, match="vggface2"):
        gallery_store.search("site", vectors[0], "vggface2", 3)
    with pytest.raises(ModelMismatch, match="vggface2"):
        gallery_store.search_subjects("site", vectors[0], "vggface2", 3)
    with pytest.raises(ModelMismatch, match="vggface2"):
        gallery_store.subject_vectors("site", "jo", "vggface2")
    assert gallery_store.gallery_size("site") == 1
    # an emptied gallery takes the next model
    gallery_store.delete_subject("site", "jo")
    gallery_store.add_face("site", "jo", vectors[2], "vggface2", SOURCE)
    assert gallery_store.search("site", vectors[2], "vggface2", 3)[0].distance < 1e-5


# --- limits ---------------------------------------------------------------------------------------


def test_gallery_and_subject_limits_refuse_with_the_limit_in_the_message(open_store):
    store = open_store(StoreLimits(max_faces=5, max_subject_faces=3))
    vectors = unit(8)
    for row in vectors[:3]:
        store.add_face("site", "kim", row, MODEL, SOURCE)
    with pytest.raises(GalleryFull, match="limit of 3 faces") as refused:
        store.add_face("site", "kim", vectors[3], MODEL, SOURCE)
    assert status_of(refused.value) == 409
    store.add_face("site", "lee", vectors[4], MODEL, SOURCE)
    store.add_face("site", "lee", vectors[5], MODEL, SOURCE)
    with pytest.raises(GalleryFull, match="limit of 5 faces"):
        store.add_face("site", "new-person", vectors[6], MODEL, SOURCE)
    assert store.gallery_size("site") == 5
    with pytest.raises(NotFound):  # the refused add created no subject
        store.get_subject("site", "new-person")
    store.delete_face("site", "kim", store.get_subject("site", "kim").faces[0].face)
    store.add_face("site", "new-person", vectors[7], MODEL, SOURCE)
    assert store.gallery_size("site") == 5


def test_concurrent_adds_never_pass_the_subject_limit(open_store):
    limits = StoreLimits(max_faces=1000, max_subject_faces=5)
    stores = [open_store(limits), open_store(limits)]
    vectors = unit(24)
    outcomes: list[str] = []

    def add(i: int) -> None:
        try:
            stores[i % 2].add_face("site", "mo", vectors[i], MODEL, SOURCE)
            outcomes.append("added")
        except GalleryFull:
            outcomes.append("full")

    threads = [threading.Thread(target=add, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("added") == 5 and outcomes.count("full") == 19
    assert stores[0].get_subject("site", "mo").subject.faces == 5
    assert len(stores[1].get_subject("site", "mo").faces) == 5


def test_limits_and_ef_search_come_from_settings(tmp_path):
    settings = Settings(data_dir=str(tmp_path), gallery_max_faces=7, gallery_max_subject_faces=2)
    store = store_from_settings(settings)
    try:
        assert store.limits == StoreLimits(7, 2)
        store.add_face("site", "x", unit(1)[0], MODEL, SOURCE)
        assert (tmp_path / "gallery.db").exists()
    finally:
        store.close()
    postgres = store_from_settings(settings.replace(gallery_url="postgresql://h/db"))
    assert postgres.ef_search == settings.gallery_ef_search == gallery_postgres.EF_SEARCH
    tuned = store_from_settings(
        settings.replace(gallery_url="postgresql://h/db", gallery_ef_search=250)
    )
    assert tuned.ef_search == 250
    with pytest.raises(ValueError, match="ef_search"):
        gallery_postgres.PostgresGalleryStore("postgresql://h/db", ef_search=1001)


# --- several workers and nodes ----------------------------------------------------------------


def test_two_stores_on_one_database_see_each_others_writes_at_once(open_store):
    first, second = open_store(), open_store()  # two workers, or two nodes
    vectors = unit(4, seed=7)
    first.add_face("site", "nat", vectors[0], MODEL, SOURCE)
    assert second.search("site", vectors[0], MODEL, 1)[0].subject == "nat"  # loads
    face = second.add_face("site", "oz", vectors[1], MODEL, SOURCE).face
    assert first.search("site", vectors[1], MODEL, 1) == [
        Candidate("oz", face, pytest.approx(0.0, abs=1e-5))
    ]
    first.add_face("site", "pat", vectors[2], MODEL, SOURCE)  # an append after a search
    assert second.search("site", vectors[2], MODEL, 1)[0].subject == "pat"
    first.delete_subject("site", "nat")
    assert {c.subject for c in second.search("site", vectors[0], MODEL, 10)} == {"oz", "pat"}
    first.delete_gallery("site")
    first.add_face("site", "quin", vectors[3], MODEL, SOURCE)  # same name, a new gallery
    assert [c.subject for c in second.search("site", vectors[1], MODEL, 10)] == ["quin"]


def _add_in_child(store, vector) -> None:
    store.add_face("site", "child", vector, MODEL, SOURCE)


def test_a_forked_process_opens_its_own_connection_and_both_see_all_writes(gallery_store):
    vectors = unit(2, seed=8)
    gallery_store.add_face("site", "parent", vectors[0], MODEL, SOURCE)
    assert gallery_store.search("site", vectors[0], MODEL, 1)[0].subject == "parent"
    child = multiprocessing.get_context("fork").Process(
        target=_add_in_child, args=(gallery_store, vectors[1])
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert gallery_store.search("site", vectors[1], MODEL, 1)[0].subject == "child"
    assert gallery_store.gallery_size("site") == 2


# --- erasure and transactions -----------------------------------------------------------------


def test_deleting_a_subject_removes_every_row_of_its_vectors(gallery_store, query):
    vectors = unit(4, seed=9)
    enrol(gallery_store, "site", {"rae": vectors[:3], "sam": vectors[3:]})
    deleted = gallery_store.delete_subject("site", "rae")
    assert (deleted.subjects, deleted.faces) == (1, 3)
    assert query("SELECT count(*) FROM faces WHERE subject = ?", ("rae",)) == [(0,)]
    assert query("SELECT count(*) FROM subjects WHERE id = ?", ("rae",)) == [(0,)]
    assert query("SELECT count(*) FROM faces") == [(1,)]
    assert all(c.subject == "sam" for c in gallery_store.search("site", vectors[0], MODEL, 10))
    assert gallery_store.gallery_size("site") == 1
    deleted = gallery_store.delete_gallery("site")
    assert (deleted.galleries, deleted.subjects, deleted.faces) == (1, 1, 1)
    assert query("SELECT count(*) FROM faces") == [(0,)]
    assert query("SELECT count(*) FROM galleries") == [(0,)]


def test_sqlite_overwrites_the_bytes_of_a_deleted_subjects_vectors(tmp_path):
    """SQLite only: secure_delete plus a WAL checkpoint leave no copy in the file or the log."""
    store = open_gallery_store(f"sqlite:///{tmp_path / 'gallery.db'}")
    vectors = unit(3, seed=10)
    try:
        enrol(store, "site", {"tia": vectors[:2], "uma": vectors[2:]})
        store.search("site", vectors[0], MODEL, 1)
        files = lambda: b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())  # noqa: E731
        assert vectors[0].astype("<f4").tobytes() in files()  # the check can see them
        store.delete_subject("site", "tia")
        content = files()
        for row in vectors[:2]:
            assert row.astype("<f4").tobytes()[:64] not in content
        assert vectors[2].astype("<f4").tobytes() in content
    finally:
        store.close()


def _fail_on_gallery_update(gallery_url: str, query) -> None:
    """Install a trigger that fails every update of a gallery's row: the last statement of
    add_face and of every delete, after their other rows were written."""
    if gallery_url.startswith("sqlite"):
        query(
            "CREATE TRIGGER injected BEFORE UPDATE ON galleries "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    else:
        query(
            "CREATE FUNCTION injected() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
        )
        query(
            "CREATE TRIGGER injected BEFORE UPDATE ON galleries "
            "FOR EACH ROW EXECUTE FUNCTION injected()"
        )


def test_a_write_failing_midway_leaves_nothing_half_written(gallery_store, gallery_url, query):
    vectors = unit(4, seed=11)
    enrol(gallery_store, "site", {"val": vectors[:2]})
    before = query("SELECT id, gallery, subject FROM faces ORDER BY id")
    _fail_on_gallery_update(gallery_url, query)
    with pytest.raises(Exception, match="injected failure"):  # a new subject and a new face
        gallery_store.add_face("site", "wes", vectors[2], MODEL, SOURCE)
    with pytest.raises(Exception, match="injected failure"):  # a new gallery too
        gallery_store.add_face("other", "wes", vectors[3], MODEL, SOURCE)
    with pytest.raises(Exception, match="injected failure"):  # faces deleted, then the failure
        gallery_store.delete_subject("site", "val")
    assert query("SELECT id, gallery, subject FROM faces ORDER BY id") == before
    assert query("SELECT gallery, id, faces FROM subjects") == [("site", "val", 2)]
    assert query("SELECT id, faces, subjects FROM galleries") == [("site", 2, 1)]
    query("DROP TRIGGER injected" + ("" if gallery_url.startswith("sqlite") else " ON galleries"))
    assert gallery_store.add_face("site", "wes", vectors[2], MODEL, SOURCE).faces == 1
    assert [c.subject for c in gallery_store.search("site", vectors[2], MODEL, 3)][0] == "wes"


def test_postgres_connection_killed_midway_leaves_nothing_and_the_store_reconnects(postgres):
    """PostgreSQL only: the server ends the session in the middle of an add."""
    store = open_gallery_store(postgres)
    vectors = unit(2, seed=12)
    with psycopg.connect(postgres, autocommit=True) as admin:
        store.add_face("site", "xia", vectors[0], MODEL, SOURCE)
        admin.execute(
            "CREATE FUNCTION killer() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$"
        )
        admin.execute(
            "CREATE TRIGGER killer BEFORE INSERT ON faces FOR EACH ROW EXECUTE FUNCTION killer()"
        )
        try:
            with pytest.raises(GalleryUnavailable):
                store.add_face("site", "yan", vectors[1], MODEL, SOURCE)
            assert admin.execute("SELECT count(*) FROM subjects WHERE id = 'yan'").fetchone() == (
                0,
            )
            assert admin.execute("SELECT faces, subjects FROM galleries").fetchone() == (1, 1)
        finally:
            admin.execute("DROP TRIGGER killer ON faces")
        assert store.add_face("site", "yan", vectors[1], MODEL, SOURCE).faces == 1
    store.close()


# --- schema --------------------------------------------------------------------------------------


def _create_v1_with_data(gallery_url: str, vector: np.ndarray) -> None:
    """A version-1 database made by version 1's migration, holding one subject with one face."""
    rows = [
        (
            "INSERT INTO galleries (id, model, faces, subjects, created) VALUES (?, ?, 1, 1, 1.0)",
            ("old", MODEL),
        ),
        (
            "INSERT INTO subjects (gallery, id, name, metadata, faces, created, updated) "
            "VALUES (?, ?, ?, ?, 1, 1.0, 1.0)",
            ("old", "vic", "Vic", '{"since": 2024}'),
        ),
    ]
    if gallery_url.startswith("sqlite"):
        connection = sqlite3.connect(gallery_url.removeprefix("sqlite:///"), isolation_level=None)
        gallery_sqlite.migrate(connection, target=1)
        for statement, params in rows:
            connection.execute(statement, params)
        connection.execute(
            "INSERT INTO faces (gallery, subject, model, vector, created) VALUES (?, ?, ?, ?, 1.0)",
            ("old", "vic", MODEL, vector.astype("<f4").tobytes()),
        )
        connection.close()
        return
    with psycopg.connect(gallery_url, autocommit=True) as connection:
        gallery_postgres.migrate(connection, target=1)
        for statement, params in rows:
            connection.execute(statement.replace("?", "%s"), params)
        connection.execute(
            "INSERT INTO faces (gallery, subject, model, vector, created) "
            "VALUES (%s, %s, %s, %s::vector, 1.0)",
            ("old", "vic", MODEL, "[" + ",".join(map(repr, vector.tolist())) + "]"),
        )


def test_opening_a_version_1_database_upgrades_it_and_keeps_its_data(
    gallery_url, open_store, query
):
    vector = unit(1, seed=13)[0]
    _create_v1_with_data(gallery_url, vector)
    assert query("SELECT version FROM schema_version") == [(1,)]
    store = open_store()
    detail = store.get_subject("old", "vic")
    assert (detail.subject.name, detail.subject.metadata, len(detail.faces)) == (
        "Vic",
        {"since": 2024},
        1,
    )
    assert store.search("old", vector, MODEL, 1)[0].subject == "vic"
    np.testing.assert_allclose(store.subject_vectors("old", "vic", MODEL), [vector], atol=1e-6)
    current = gallery_sqlite if gallery_url.startswith("sqlite") else gallery_postgres
    assert query("SELECT version FROM schema_version") == [(current.SCHEMA_VERSION,)]
    store.add_face("old", "vic", unit(1, seed=14)[0], MODEL, SOURCE)
    assert store.gallery_size("old") == 2


def test_sqlite_loads_a_gallery_in_id_order_from_its_index_without_sorting(tmp_path):
    """SQLite only (schema 3): the matrix load reads one gallery's faces by (gallery, id)."""
    store = open_gallery_store(f"sqlite:///{tmp_path / 'gallery.db'}")
    store.add_face("site", "x", unit(1)[0], MODEL, SOURCE)
    connection = sqlite3.connect(tmp_path / "gallery.db")
    plan = connection.execute(
        "EXPLAIN QUERY PLAN SELECT id, subject, vector FROM faces "
        "WHERE gallery = ? AND model = ? AND id > ? ORDER BY id LIMIT ?",
        ("site", MODEL, 0, 10),
    ).fetchall()
    connection.close()
    store.close()
    details = " ".join(row[-1] for row in plan)
    assert "faces_by_gallery" in details and "TEMP B-TREE" not in details


def test_a_database_from_a_newer_facematch_is_refused(gallery_store, query):
    gallery_store.put_subject("site", "wil", None, None)
    gallery_store.close()
    query("UPDATE schema_version SET version = 99")
    with pytest.raises(GalleryUnavailable):
        gallery_store.get_subject("site", "wil")


# --- the database down ---------------------------------------------------------------------------


def test_sqlite_file_that_cannot_be_opened_is_unavailable(tmp_path):
    (tmp_path / "not-a-dir").write_text("x")
    (tmp_path / "garbage.db").write_bytes(b"not a database" * 100)
    for path in ("not-a-dir/gallery.db", "garbage.db"):
        store = open_gallery_store(f"sqlite:///{tmp_path / path}")  # opening connects to nothing
        with pytest.raises(GalleryUnavailable) as refused:
            store.search("site", unit(1)[0], MODEL, 1)
        assert status_of(refused.value) == 503 and str(tmp_path) not in refused.value.message
        assert store.health() is False


def test_postgres_down_or_unreachable_is_unavailable_quickly_and_recovers():
    from benchmarking_utils.local_gunicorn import free_port

    closed = open_gallery_store(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    started = time.monotonic()
    with pytest.raises(GalleryUnavailable):
        closed.gallery_size("site")
    assert closed.health() is False
    assert time.monotonic() - started < 10

    server = Postgres()
    try:
        store = open_gallery_store(server.url)
        vector = unit(1)[0]
        store.add_face("site", "zoe", vector, MODEL, SOURCE)
        server.server.cleanup()  # stop it: the store holds a connection to a dead server
        for call in (
            lambda: store.search("site", vector, MODEL, 1),
            lambda: store.add_face("site", "zoe", vector, MODEL, SOURCE),
            lambda: store.list_subjects("site"),
        ):
            started = time.monotonic()
            with pytest.raises(GalleryUnavailable) as refused:
                call()
            assert time.monotonic() - started < 10
            assert refused.value.message == "the gallery database is unavailable"
        assert store.health() is False
        import pgserver

        server.server = pgserver.get_server(server.workdir, cleanup_mode="stop")
        assert server.server.get_uri() == server.url
        assert store.search("site", vector, MODEL, 1)[0].subject == "zoe"
        assert store.health() is True
        store.close()
    finally:
        server.stop()


def test_postgres_connections_use_tcp_keepalives_unless_the_url_sets_its_own(postgres):
    """PostgreSQL only: what libpq was given (a partition breaks a TCP connection in ~30 s)."""
    own = postgres + ("&" if "?" in postgres else "?") + "keepalives_idle=42"
    for url, idle in ((postgres, "10"), (own, "42")):
        with gallery_postgres.PostgresGalleryStore(url)._open(math.inf) as connection:
            given = {o.keyword.decode(): o.val and o.val.decode() for o in connection.pgconn.info}
        assert given["keepalives"] == "1" and given["keepalives_idle"] == idle
        assert (given["keepalives_interval"], given["keepalives_count"]) == ("5", "4")
        assert given["tcp_user_timeout"] == "30000"


def test_postgres_frozen_each_thread_gives_up_at_its_deadline_at_once_then_reconnects():
    """PostgreSQL only: the server SIGSTOPped while two threads hold connections. Both calls
    meet the client's deadline side by side (not one after the other), and after SIGCONT the
    same threads work again on new connections, with nothing committed lost."""
    server = Postgres()
    try:
        store = open_gallery_store(server.url)
        vectors = unit(2, seed=13)
        step = threading.Barrier(3)  # the two threads and this one
        failed: list[float] = []
        found: list[str] = []

        def thread(i: int) -> None:
            store.add_face("site", f"s{i}", vectors[i], MODEL, SOURCE)  # its connection
            step.wait()
            step.wait()  # frozen now
            started = time.monotonic()
            with pytest.raises(GalleryUnavailable):
                store.search("site", vectors[i], MODEL, 1)
            failed.append(time.monotonic() - started)
            step.wait()
            step.wait()  # thawed now
            found.append(store.search("site", vectors[i], MODEL, 1)[0].subject)

        threads = [threading.Thread(target=thread, args=(i,)) for i in range(2)]
        for each in threads:
            each.start()
        step.wait(timeout=30)
        with server.frozen():
            step.wait(timeout=30)
            step.wait(timeout=30)
        step.wait(timeout=30)
        for each in threads:
            each.join()
        deadline = gallery_postgres.CALL_TIMEOUT_S
        assert len(failed) == 2 and all(deadline - 0.1 < s < deadline + 0.5 for s in failed)
        assert sorted(found) == ["s0", "s1"] and store.gallery_size("site") == 2
        store.close()
    finally:
        server.stop()


# --- PostgreSQL's HNSW index -----------------------------------------------------------------


def test_postgres_builds_a_gallery_index_past_its_size_and_searches_with_it(postgres):
    """PostgreSQL only: with ``index_from=300`` the gallery gets its HNSW index in the
    background; searches then use it (the index's scan count) and still find the nearest."""
    store = gallery_postgres.PostgresGalleryStore(postgres, index_from=300)
    vectors = unit(400, seed=15)
    try:
        for i, row in enumerate(vectors):
            store.add_face("big", f"s{i // 4}", row, MODEL, SOURCE)
        store.add_face("small", "one", vectors[0], MODEL, SOURCE)
        name = gallery_postgres.index_name("big")
        with psycopg.connect(postgres, autocommit=True) as connection:
            wait_until(
                lambda: connection.execute(
                    "SELECT indexed FROM galleries WHERE id = 'big'"
                ).fetchone()[0],
                60,
                what="the HNSW index",
            )
            assert connection.execute(
                "SELECT indexed FROM galleries WHERE id = 'small'"
            ).fetchone() == (False,)
            scans = lambda: connection.execute(  # noqa: E731
                "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = %s", (name,)
            ).fetchone()[0]
            before = scans()
            hits = [
                store.search("big", near(vectors[i], 0.05, seed=i), MODEL, 1)[0]
                for i in range(0, 400, 7)
            ]
            assert [h.subject for h in hits] == [f"s{i // 4}" for i in range(0, 400, 7)]
            subjects = store.search_subjects("big", vectors[9], MODEL, 10)
            assert subjects[0].subject == "s2" and len({c.subject for c in subjects}) == 10
            wait_until(lambda: scans() >= before + 59, 10, what="searches on the index")
            store.delete_gallery("big")
            assert connection.execute(
                "SELECT count(*) FROM pg_indexes WHERE indexname = %s", (name,)
            ).fetchone() == (0,)
    finally:
        store.close()


def test_the_embedding_dimension_is_the_codecs():
    from facematch.api.codec import EMBEDDING_DIM as codec_dim
    from facematch.gallery.store import EMBEDDING_DIM

    assert EMBEDDING_DIM == codec_dim == 512


# --- the audit trail -----------------------------------------------------------------------------


def trail(store, gallery: str) -> list[tuple]:
    """Every event of ``gallery`` as (key, action, subject, face, outcome), in order."""
    events, after = [], None
    while True:
        page = store.audit_events(gallery, limit=2, after=after)
        events += [(e.key, e.action, e.subject, e.face, e.outcome) for e in page.events]
        if page.next is None:
            return events
        after = page.next


def test_every_write_and_decision_is_audited_in_order_with_its_key(gallery_store):
    vectors = unit(3, seed=30)
    first = gallery_store.add_face("site", "amy", vectors[0], MODEL, SOURCE, actor="k1")
    batch = [("amy", vectors[1], SOURCE), ("ben", vectors[2], SOURCE)]
    added = gallery_store.add_faces("site", batch, MODEL, actor="k2")
    gallery_store.put_subject("site", "amy", "Amy", None, actor="k1")
    gallery_store.add_faces("site", [("cy", vectors[0], SOURCE)], MODEL, actor="t", action="import")
    gallery_store.record("site", "identify", {"identified": "amy", "distance": 0.1}, actor="k3",
                         subject="amy")  # fmt: skip
    gallery_store.record("site", "verify", {"match": False, "distance": 0.9}, subject="ben")
    gallery_store.delete_face("site", "amy", first.face, actor="k1")
    gallery_store.delete_subject("site", "ben", actor="k2")
    gallery_store.delete_gallery("site", actor="k4")
    assert trail(gallery_store, "site") == [
        ("k1", "enrol", "amy", first.face, {"faces": 1}),
        ("k2", "enrol", "amy", added[0].face, {"faces": 2}),
        ("k2", "enrol", "ben", added[1].face, {"faces": 1}),
        ("k1", "update", "amy", None, {"created": False}),
        ("t", "import", None, None, {"subjects": 1, "faces": 1}),
        ("k3", "identify", "amy", None, {"identified": "amy", "distance": 0.1}),
        ("local", "verify", "ben", None, {"match": False, "distance": 0.9}),
        ("k1", "delete_face", "amy", first.face, {"faces": 1}),
        ("k2", "delete_subject", "ben", None, {"subjects": 1, "faces": 1}),
        ("k4", "delete_gallery", None, None, {"subjects": 2, "faces": 2}),
    ]
    assert trail(gallery_store, "elsewhere") == []
    (event,) = gallery_store.audit_events("site", limit=1).events
    assert event.gallery == "site" and abs(event.at - time.time()) < 60


def test_the_audit_holds_no_vector_and_a_deleted_subjects_events_stay(gallery_store, query):
    vectors = unit(2, seed=31)
    enrol(gallery_store, "site", {"dee": vectors})
    gallery_store.delete_subject("site", "dee")
    assert query("SELECT count(*) FROM faces") == [(0,)]
    rows = query("SELECT * FROM audit")
    assert [row[3] for row in rows] == ["enrol", "enrol", "delete_subject"]
    text = repr(rows)
    assert all(len(str(value)) < 100 for row in rows for value in row)  # ids and counts only
    assert repr(float(vectors[0][0]))[:8] not in text


def test_a_write_whose_audit_event_fails_writes_nothing(gallery_store, gallery_url, query):
    vectors = unit(3, seed=32)
    enrol(gallery_store, "site", {"eve": vectors[:1]})
    before = [query(f"SELECT * FROM {table}") for table in ("galleries", "subjects", "audit")]
    faces = query("SELECT id, subject FROM faces")
    face = str(faces[0][0])
    if gallery_url.startswith("sqlite"):
        query(
            "CREATE TRIGGER injected BEFORE INSERT ON audit "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    else:
        query(
            "CREATE FUNCTION injected() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
        )
        query(
            "CREATE TRIGGER injected BEFORE INSERT ON audit "
            "FOR EACH ROW EXECUTE FUNCTION injected()"
        )
    writes = [
        lambda: gallery_store.add_face("site", "fay", vectors[1], MODEL, SOURCE),
        lambda: gallery_store.add_faces("new", [("fay", vectors[2], SOURCE)], MODEL),
        lambda: gallery_store.add_faces(
            "new", [("fay", vectors[2], SOURCE)], MODEL, action="import"
        ),
        lambda: gallery_store.put_subject("site", "eve", "Eve", None),
        lambda: gallery_store.delete_face("site", "eve", face),
        lambda: gallery_store.delete_subject("site", "eve"),
        lambda: gallery_store.delete_gallery("site"),
        lambda: gallery_store.record("site", "identify", {"identified": None, "distance": None}),
    ]
    for write in writes:
        with pytest.raises(Exception, match="injected failure"):
            write()
    assert [query(f"SELECT * FROM {table}") for table in ("galleries", "subjects", "audit")] == (
        before
    )
    assert query("SELECT id, subject FROM faces") == faces
    assert gallery_store.gallery_size("new") == 0


def test_retention_prunes_expired_events_at_most_once_per_interval(gallery_url, query):
    start = 1_000_000.0
    now = [start]
    retention = AuditRetention(days=1, prune_every_s=3600)
    if gallery_url.startswith("sqlite"):
        store = gallery_sqlite.SqliteGalleryStore(
            gallery_url.removeprefix("sqlite:///"), retention=retention, clock=lambda: now[0]
        )
    else:
        store = gallery_postgres.PostgresGalleryStore(
            gallery_url, retention=retention, clock=lambda: now[0]
        )
    subjects = lambda: [e.subject for e in store.audit_events("site").events]  # noqa: E731
    try:
        store.put_subject("site", "gus", None, None)  # the process's first prune (nothing)
        now[0] = start + 1800
        store.put_subject("site", "hal", None, None)  # within the hour: no prune
        now[0] = start + 86_400 + 60  # gus is over a day old, hal not
        store.put_subject("site", "ivy", None, None)
        assert subjects() == ["hal", "ivy"]
        now[0] += 60
        query("UPDATE audit SET at = 0")  # every event expired, but a prune ran a minute ago
        store.record("site", "verify", {"match": True, "distance": 0.2}, subject="hal")
        assert subjects() == ["hal", "ivy", "hal"]
        now[0] += 3600  # an hour on: the next write prunes
        store.record("site", "verify", {"match": False, "distance": 0.9}, subject="ivy")
        assert subjects() == ["hal", "ivy"]
        assert [e.action for e in store.audit_events("site").events] == ["verify", "verify"]
    finally:
        store.close()


def test_audit_pages_follow_their_cursor_and_refuse_a_bad_one(gallery_store):
    for i in range(5):
        gallery_store.put_subject("site", f"s{i}", None, None, actor=f"k{i}")
    first = gallery_store.audit_events("site", limit=3)
    assert [e.key for e in first.events] == ["k0", "k1", "k2"] and first.next is not None
    rest = gallery_store.audit_events("site", limit=3, after=first.next)
    assert [e.key for e in rest.events] == ["k3", "k4"] and rest.next is None
    exact = gallery_store.audit_events("site", limit=5)
    assert len(exact.events) == 5 and exact.next is None
    for bad in ("abc", "-1", "1" * 19, "²"):
        with pytest.raises(InvalidParameter):
            gallery_store.audit_events("site", after=bad)
    for bad in (0, 1001):
        with pytest.raises(InvalidParameter):
            gallery_store.audit_events("site", limit=bad)
