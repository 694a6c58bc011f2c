"""Speed and size of gallery search, on both backends, at 10k, 100k and 1M enrolled faces.

What it measures, per backend and gallery size (``--sizes``):

- **search**: the store's ``search_subjects`` (what ``identify`` runs, ``k = 5``) for each query,
  p50 and p99 in milliseconds, after one untimed pass (a server that has run a while);
- **recall at 1** against exact search (numpy, float32 over every stored vector): PostgreSQL's
  HNSW index at each ``--ef-search``; SQLite is exact by design and checked the same way;
- **index build** (PostgreSQL): seconds of the store's ``build_index`` for the gallery;
- **first search** (SQLite): seconds the worker takes to load the gallery's matrix;
- **memory per worker** (SQLite): RSS and PSS of a fresh process before and after it loaded the
  gallery's matrix (a Gunicorn worker holds one such copy per gallery it searches);
- **enrolment rate**: faces per second through ``add_face`` (one face, one transaction) and
  ``add_faces`` (``--batch`` faces per transaction), into a fresh gallery of each backend.

The data are "LFW-like": the LFW embeddings the accuracy tools cache (``--lfw-embeddings``, an
``.npz`` of ``names`` and ``vectors``), one image of each person with two or more held out as the
queries and the rest enrolled, the gallery then filled to its size with synthetic unit vectors
drawn from a Gaussian fitted to the LFW embeddings (mean and covariance), so fillers sit where
real faces do rather than spread uniformly over the sphere. The query's true nearest face is then
usually one of that person's other images, among up to a million other "faces".

The galleries are written straight into the store's tables (a bulk load, as a restore would) in
``--workdir``; ``--reuse`` keeps those already there (and their indexes and build times), so the
1M PostgreSQL index (the slow part: an hour or more on two shared cores) is built once. Without
``--pg-url`` a PostgreSQL 16 with pgvector from PyPI's ``pgserver`` is started in the workdir and
left running for the next run (``--stop-postgres`` stops it at the end).

The whole-request figure needs a running facematch with the gallery routes: ``--url`` sends
``identify`` requests on LFW photos to a gallery this command loaded (the server's
``FACEMATCH_GALLERY_URL`` pointing at the same database) and ``/cached_match`` requests on the
same photos, and reports both and their ratio.

    python -m benchmarking_utils.gallery_speed --sizes 10000,100000,1000000 \\
        --out docs/results/gallery_speed.json
    python -m benchmarking_utils.gallery_speed --url http://127.0.0.1:8000 --http-size 100000

Every figure carries the load average at the time it was measured: the development machine is
shared, and a figure measured while the 1-minute load exceeds the core count is marked ``loaded``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import secrets
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarking_utils.common import machine, write_json
from deployment_utils.lfw import lfw_dir
from facematch.config import Settings
from facematch.gallery.opening import open_gallery_store
from facematch.gallery.postgres import HNSW_EF_CONSTRUCTION, HNSW_M
from facematch.gallery.store import FaceSource

REPO = Path(__file__).resolve().parents[1]
SIZES = (10_000, 100_000, 1_000_000)
BACKENDS = ("sqlite", "postgres")
DIM = 512
K = 5  # identify's default top_k
CHUNK = 50_000  # synthetic vectors generated (and written) at a time
EF_SEARCHES = (40, 100, 200)
LFW_CACHE = REPO / "benchmark_results" / "cache"


# --- the data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lfw:
    """LFW embeddings: ``names`` (``<Name>/<Name>_NNNN.jpg``) and unit ``vectors`` (n, 512)."""

    names: tuple[str, ...]
    vectors: np.ndarray


def find_lfw_embeddings() -> Path | None:
    """The newest cached all-of-LFW embeddings file (``benchmarking_utils.lfw_embeddings``)."""
    found = sorted(LFW_CACHE.glob("lfw-embeddings-all-*.npz"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def load_lfw(path: Path) -> Lfw:
    """Read an ``.npz`` of ``names`` and ``vectors`` (never pickles); vectors made unit."""
    with np.load(path, allow_pickle=False) as data:
        names = tuple(str(n) for n in data["names"])
        vectors = np.asarray(data["vectors"], dtype=np.float32)
    if vectors.shape != (len(names), DIM):
        raise SystemExit(f"{path}: expected {len(names)} x {DIM} vectors, got {vectors.shape}")
    return Lfw(names, _unit(vectors))


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class Dataset:
    """One gallery's contents, produced in chunks: the enrolled LFW images first (subject = the
    person), then synthetic faces (one subject each); and the held-out LFW queries."""

    size: int
    seed: int
    enrolled_subjects: tuple[str, ...]
    enrolled: np.ndarray  # (e, 512) unit
    queries: np.ndarray  # (q, 512) unit
    query_names: tuple[str, ...]
    mean: np.ndarray  # (512,) of the synthetic Gaussian
    factor: np.ndarray  # (512, 512): synthetic = unit(mean + z @ factor)

    def chunks(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """``(subjects, vectors)`` in storage order, ``CHUNK`` rows at most each."""
        real = min(self.size, len(self.enrolled))
        for start in range(0, real, CHUNK):
            end = min(real, start + CHUNK)
            yield list(self.enrolled_subjects[start:end]), self.enrolled[start:end]
        for index, start in enumerate(range(0, self.size - real, CHUNK)):
            n = min(CHUNK, self.size - real - start)
            rng = np.random.default_rng([self.seed, index])
            z = rng.standard_normal((n, DIM), dtype=np.float32)
            vectors = _unit(self.mean + z @ self.factor)
            yield [f"synthetic-{start + i:07d}" for i in range(n)], vectors


def make_dataset(size: int, lfw: Lfw | None, queries: int, seed: int) -> Dataset:
    """The dataset of ``size`` faces: LFW (if given) plus LFW-like synthetic fillers, and up to
    ``queries`` held-out LFW images as queries (without LFW: stored vectors plus noise)."""
    rng = np.random.default_rng(seed)
    if lfw is None:
        empty = np.empty((0, DIM), np.float32)
        mean, factor = np.zeros(DIM, np.float32), np.eye(DIM, dtype=np.float32)
        stored = next(Dataset(size, seed, (), empty, empty, (), mean, factor).chunks())[1]
        noise = 0.03 * rng.standard_normal((min(queries, len(stored)), DIM)).astype(np.float32)
        return Dataset(size, seed, (), empty, _unit(stored[: len(noise)] + noise), (), mean, factor)
    people: dict[str, list[int]] = {}
    for i, name in enumerate(lfw.names):
        people.setdefault(name.split("/", 1)[0], []).append(i)
    held = [rows[-1] for rows in people.values() if len(rows) >= 2]
    chosen = sorted(rng.permutation(held)[:queries].tolist())
    held_set = set(held)
    keep = [i for i in range(len(lfw.names)) if i not in held_set]
    mean = lfw.vectors.mean(axis=0)
    covariance = np.cov(lfw.vectors, rowvar=False) + 1e-6 * np.eye(DIM)
    factor = np.linalg.cholesky(covariance).T.astype(np.float32)
    return Dataset(
        size=size,
        seed=seed,
        enrolled_subjects=tuple(lfw.names[i].split("/", 1)[0] for i in keep),
        enrolled=lfw.vectors[keep],
        queries=lfw.vectors[chosen],
        query_names=tuple(lfw.names[i] for i in chosen),
        mean=mean.astype(np.float32),
        factor=factor,
    )


def exact_nearest(dataset: Dataset) -> tuple[np.ndarray, list[str]]:
    """Each query's exact nearest stored face: its cosine distance and its subject."""
    best = np.full(len(dataset.queries), -np.inf, np.float32)
    subjects = [""] * len(dataset.queries)
    for names, vectors in dataset.chunks():
        scores = vectors @ dataset.queries.T
        rows = scores.argmax(axis=0)
        for q, row in enumerate(rows):
            if scores[row, q] > best[q]:
                best[q], subjects[q] = scores[row, q], names[row]
    return 1.0 - best, subjects


# --- writing galleries -----------------------------------------------------------------------


def _subject_counts(dataset: Dataset) -> dict[str, int]:
    counts: dict[str, int] = {}
    for subjects, _ in dataset.chunks():
        for subject in subjects:
            counts[subject] = counts.get(subject, 0) + 1
    return counts


def load_sqlite(path: Path, gallery: str, dataset: Dataset, model: str) -> None:
    """Write ``dataset`` as ``gallery`` into the SQLite store at ``path`` (one transaction)."""
    store = open_gallery_store(f"sqlite:///{path}")
    store.gallery_size(gallery)  # creates the schema
    store.close()
    now = time.time()
    counts = _subject_counts(dataset)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            "INSERT INTO galleries (id, model, faces, subjects, token, generation, deletions, "
            "created) VALUES (?, ?, ?, ?, ?, 1, 0, ?)",
            (gallery, model, dataset.size, len(counts), secrets.randbits(62), now),
        )
        connection.executemany(
            "INSERT INTO subjects (gallery, id, faces, created, updated) VALUES (?, ?, ?, ?, ?)",
            ((gallery, s, n, now, now) for s, n in counts.items()),
        )
        for subjects, vectors in dataset.chunks():
            connection.executemany(
                "INSERT INTO faces (gallery, subject, model, vector, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    (gallery, s, model, v.astype("<f4").tobytes(), now)
                    for s, v in zip(subjects, vectors, strict=True)
                ),
            )
        connection.execute("COMMIT")


def _copy_binary(rows: Iterator[tuple[bytes, ...]]) -> Iterator[bytes]:
    """PostgreSQL's binary COPY stream of rows whose fields are already encoded."""
    yield b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
    buffer = bytearray()
    for row in rows:
        buffer += struct.pack("!h", len(row))
        for field in row:
            buffer += struct.pack("!i", len(field)) + field
        if len(buffer) > 1 << 22:
            yield bytes(buffer)
            buffer.clear()
    yield bytes(buffer) + struct.pack("!h", -1)


def load_postgres(url: str, gallery: str, dataset: Dataset, model: str) -> None:
    """Write ``dataset`` as ``gallery`` into the PostgreSQL store at ``url`` (binary COPY, one
    transaction); the index is built afterwards by the store."""
    import psycopg

    store = open_gallery_store(url)
    store.gallery_size(gallery)  # creates the schema
    store.close()
    now = time.time()
    counts = _subject_counts(dataset)
    created = struct.pack("!d", now)
    header = struct.pack("!hh", DIM, 0)

    def faces() -> Iterator[tuple[bytes, ...]]:
        g, m = gallery.encode(), model.encode()
        for subjects, vectors in dataset.chunks():
            big = vectors.astype(">f4")
            for subject, vector in zip(subjects, big, strict=True):
                yield g, subject.encode(), m, header + vector.tobytes(), created

    with psycopg.connect(url) as connection:
        connection.execute(
            "INSERT INTO galleries (id, model, faces, subjects, token, generation, deletions, "
            "created) VALUES (%s, %s, %s, %s, %s, 1, 0, %s)",
            (gallery, model, dataset.size, len(counts), secrets.randbits(62), now),
        )
        with connection.cursor().copy(
            "COPY subjects (gallery, id, faces, created, updated) FROM STDIN"
        ) as copy:
            for subject, n in counts.items():
                copy.write_row((gallery, subject, n, now, now))
        with connection.cursor().copy(
            "COPY faces (gallery, subject, model, vector, created) FROM STDIN WITH (FORMAT binary)"
        ) as copy:
            for block in _copy_binary(faces()):
                copy.write(block)
        connection.commit()
        connection.autocommit = True
        connection.execute("ANALYZE faces")


# --- PostgreSQL -------------------------------------------------------------------------------


def start_postgres(workdir: Path, shared_buffers: str) -> tuple[str, object]:
    """A PostgreSQL with pgvector (``pgserver``) in ``workdir/pg``, with ``shared_buffers``
    (restarted once to apply it); its URL and the server handle."""
    import pgserver

    directory = workdir / "pg"
    directory.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(directory, cleanup_mode=None)
    current = server.psql("SHOW shared_buffers;")
    if shared_buffers.lower() not in current.lower():
        server.psql(f"ALTER SYSTEM SET shared_buffers = '{shared_buffers}';")
        server.psql("ALTER SYSTEM SET max_parallel_maintenance_workers = 1;")
        server.cleanup_mode = "stop"
        server.cleanup()
        server = pgserver.get_server(directory, cleanup_mode=None)
    return server.get_uri(), server


def database_url(base: str, name: str) -> str:
    """The URL of database ``name`` on the server at ``base`` (created when missing)."""
    import psycopg

    with psycopg.connect(base, autocommit=True) as connection:
        found = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if found.fetchone() is None:
            connection.execute(f'CREATE DATABASE "{name}"')
    head, _, query = base.partition("?")
    scheme, _, rest = head.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{name}" + (f"?{query}" if query else "")


# --- measuring --------------------------------------------------------------------------------


def load_average() -> float:
    """The 1-minute load average."""
    return round(os.getloadavg()[0], 2)


def conditions() -> dict:
    """The load average now and whether it exceeds the core count (a figure measured ``loaded``
    is pessimistic: other jobs took CPU time)."""
    load = load_average()
    return {"load_average": load, "loaded": load > (os.cpu_count() or 1)}


def percentiles(values: list[float]) -> dict:
    """p50 and p99 (and the count) of milliseconds."""
    a = np.asarray(values, dtype=np.float64)
    return {
        "n": int(a.size),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
    }


def time_searches(store, gallery: str, dataset: Dataset, model: str) -> tuple[dict, list]:
    """One untimed pass, then one timed pass of ``search_subjects`` over every query: p50 and
    p99 of the wall time, the CPU time of the searching thread (p50; a search that had a core to
    itself would take about this long), for PostgreSQL the mean CPU time of its server process
    per search, and the top candidate of each."""
    for query in dataset.queries:
        store.search_subjects(gallery, query, model, K)
    connection = getattr(getattr(store, "_local", None), "connection", None)
    server = connection.info.backend_pid if hasattr(connection, "info") else None
    server_before = _process_cpu_ms(server) if server else 0.0
    times, cpu, tops = [], [], []
    for query in dataset.queries:
        start, start_cpu = time.perf_counter(), time.thread_time()
        found = store.search_subjects(gallery, query, model, K)
        cpu.append((time.thread_time() - start_cpu) * 1000)
        times.append((time.perf_counter() - start) * 1000)
        tops.append(found[0])
    result = {**percentiles(times), "thread_cpu_p50_ms": round(float(np.median(cpu)), 3)}
    if server:
        used = _process_cpu_ms(server) - server_before
        result["server_cpu_mean_ms"] = round(used / len(times), 3)
    return result, tops


def _process_cpu_ms(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far, in milliseconds (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def recall_at_1(tops: list, exact: tuple[np.ndarray, list[str]]) -> float:
    """The share of queries whose top candidate is the exact nearest face (by subject, or at
    the same distance: ties)."""
    distances, subjects = exact
    hits = sum(
        top.subject == subject or abs(top.distance - float(distance)) < 1e-4
        for top, distance, subject in zip(tops, distances, subjects, strict=True)
    )
    return round(hits / len(tops), 4)


def int8_scan(matrix, queries: np.ndarray) -> dict:
    """The int8 pass alone (what bounds the SQLite search): p50 and p99 per query, and the
    rate it reads the int8 matrix at (GB/s)."""
    from facematch.gallery.search import _approximate

    snapshot = matrix._snapshot()
    times = []
    for query in queries:
        start = time.perf_counter()
        _approximate(snapshot, query)
        times.append((time.perf_counter() - start) * 1000)
    result = percentiles(times)
    read = snapshot.n * DIM / 1e9
    return {**result, "read_gb_per_s": round(read / (result["p50_ms"] / 1000), 2), **conditions()}


def worker_memory(path: Path, gallery: str, model: str) -> dict:
    """RSS and PSS (MiB) of a fresh process before and after it searched ``gallery`` once
    (which loads its matrix), and the seconds that first search took."""
    code = (
        "import json, sys, time; import numpy as np\n"
        "from benchmarking_utils.gallery_speed import _memory\n"
        "from facematch.gallery.opening import open_gallery_store\n"
        f"store = open_gallery_store('sqlite:///{path}')\n"
        "store.gallery_size('none'); before = _memory()\n"
        "q = np.ones(512, np.float32); start = time.perf_counter()\n"
        f"store.search_subjects({gallery!r}, q, {model!r}, 5)\n"
        "seconds = time.perf_counter() - start\n"
        "print(json.dumps({'before': before, 'after': _memory(), 'first_search_s': seconds}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "rss_mib": result["after"]["rss"],
        "pss_mib": result["after"]["pss"],
        "rss_before_mib": result["before"]["rss"],
        "matrix_mib": round(result["after"]["rss"] - result["before"]["rss"], 1),
        "first_search_s": round(result["first_search_s"], 2),
    }


def _memory() -> dict:
    """This process's RSS and PSS in MiB (``/proc/self/smaps_rollup``)."""
    values = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key.lower()] = round(int(rest.split()[0]) / 1024, 1)
    return values


def enrolment_rate(url: str, model: str, faces: int, batch: int, seed: int) -> dict:
    """Faces per second into a fresh gallery: ``faces`` one by one (``add_face``), then
    ``faces`` in transactions of ``batch`` (``add_faces``)."""
    store = open_gallery_store(url)
    rng = np.random.default_rng(seed)
    vectors = _unit(rng.standard_normal((2 * faces, DIM)).astype(np.float32))
    source = FaceSource()
    with contextlib.suppress(Exception):
        store.delete_gallery("enrol-rate")
    start = time.perf_counter()
    for i in range(faces):
        store.add_face("enrol-rate", f"one-{i}", vectors[i], model, source)
    single = faces / (time.perf_counter() - start)
    load = load_average()
    start = time.perf_counter()
    for first in range(0, faces, batch):
        items = [
            (f"batch-{i}", vectors[faces + i], source)
            for i in range(first, min(faces, first + batch))
        ]
        store.add_faces("enrol-rate", items, model)
    batched = faces / (time.perf_counter() - start)
    store.delete_gallery("enrol-rate")
    store.close()
    return {
        "one_by_one_faces_per_s": round(single, 1),
        "batch_faces_per_s": round(batched, 1),
        "faces": faces,
        "batch": batch,
        "load_average": load,
        **{k: v for k, v in conditions().items() if k == "loaded"},
    }


@dataclass(frozen=True)
class Run:
    """The options of one run of the command."""

    sizes: tuple[int, ...]
    backends: tuple[str, ...]
    queries: int
    ef_searches: tuple[int, ...]
    workdir: Path
    pg_url: str
    shared_buffers: str
    build_memory: str
    hnsw_m: int
    hnsw_ef_construction: int
    enrol_faces: int
    batch: int
    reuse: bool
    seed: int
    model: str


def _gallery(size: int) -> str:
    return f"speed-{size}"


def _prepared(url: str, gallery: str, size: int) -> bool:
    try:
        return open_gallery_store(url).gallery_size(gallery) == size
    except Exception:  # noqa: BLE001 - a database that is not there yet is not prepared
        return False


def measure_sqlite(run: Run, dataset: Dataset, exact) -> dict:
    """Load (unless reused), then search, recall and memory of one SQLite gallery."""
    path = run.workdir / f"sqlite-{dataset.size}.db"
    gallery = _gallery(dataset.size)
    url = f"sqlite:///{path}"
    if not (run.reuse and _prepared(url, gallery, dataset.size)):
        path.unlink(missing_ok=True)
        start = time.perf_counter()
        load_sqlite(path, gallery, dataset, run.model)
        print(f"sqlite {dataset.size}: loaded in {time.perf_counter() - start:.0f} s", flush=True)
    memory = {**worker_memory(path, gallery, run.model), **conditions()}
    store = open_gallery_store(url)
    timed, tops = time_searches(store, gallery, dataset, run.model)
    search = {**timed, **conditions()}
    result = {
        "backend": "sqlite",
        "faces": dataset.size,
        "search": search,
        "int8_scan": int8_scan(store._matrices[gallery].faces, dataset.queries),
        "recall_at_1": recall_at_1(tops, exact),
        "memory_per_worker": memory,
        "database_mib": round(path.stat().st_size / 2**20, 1),
    }
    store.close()
    return result


def measure_postgres(run: Run, base_url: str, dataset: Dataset, exact) -> dict:
    """Load and index (unless reused), then search and recall at each ``ef_search``."""
    from facematch.gallery.postgres import PostgresGalleryStore

    gallery = _gallery(dataset.size)
    index = f"{dataset.size}"
    if (run.hnsw_m, run.hnsw_ef_construction) != (HNSW_M, HNSW_EF_CONSTRUCTION):
        index += f"_m{run.hnsw_m}_efc{run.hnsw_ef_construction}"
    url = database_url(base_url, f"gallery_speed_{index}")
    builds = run.workdir / f"postgres-{index}-build.json"
    if not (run.reuse and _prepared(url, gallery, dataset.size) and builds.exists()):
        import psycopg

        with psycopg.connect(url, autocommit=True) as connection:
            for table in ("faces", "subjects", "galleries", "audit"):
                connection.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
            connection.execute("DROP TABLE IF EXISTS schema_version")
        builds.unlink(missing_ok=True)
        start = time.perf_counter()
        load_postgres(url, gallery, dataset, run.model)
        loaded = time.perf_counter() - start
        print(f"postgres {dataset.size}: loaded in {loaded:.0f} s", flush=True)
        store = PostgresGalleryStore(
            url,
            build_memory=run.build_memory,
            hnsw_m=run.hnsw_m,
            hnsw_ef_construction=run.hnsw_ef_construction,
        )
        before = conditions()
        start = time.perf_counter()
        if not store.build_index(gallery):
            raise SystemExit(f"postgres {dataset.size}: the index build failed (see the log)")
        seconds = time.perf_counter() - start
        build = {
            "build_s": round(seconds, 1),
            "load_s": round(loaded, 1),
            "maintenance_work_mem": run.build_memory,
            "m": run.hnsw_m,
            "ef_construction": run.hnsw_ef_construction,
            "load_average_before": before["load_average"],
            **conditions(),
        }
        builds.write_text(json.dumps(build) + "\n")
        print(f"postgres {dataset.size}: index built in {seconds:.0f} s", flush=True)
        store.close()
    build = json.loads(builds.read_text())
    searches = []
    for ef_search in run.ef_searches:
        store = PostgresGalleryStore(url, ef_search=ef_search)
        timed, tops = time_searches(store, gallery, dataset, run.model)
        store.close()
        searches.append(
            {
                "ef_search": ef_search,
                **timed,
                "recall_at_1": recall_at_1(tops, exact),
                **conditions(),
            }
        )
        print(f"postgres {dataset.size} ef_search {ef_search}: {searches[-1]}", flush=True)
    import psycopg

    with psycopg.connect(url) as connection:
        table, index = connection.execute(
            "SELECT pg_total_relation_size('faces') - pg_indexes_size('faces'), "
            "pg_relation_size(%s)",
            (_index_name(gallery),),
        ).fetchone()
    return {
        "backend": "postgres",
        "faces": dataset.size,
        "index": {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, **build},
        "searches": searches,
        "table_mib": round(table / 2**20, 1),
        "index_mib": round(index / 2**20, 1),
    }


def _index_name(gallery: str) -> str:
    from facematch.gallery.postgres import index_name

    return index_name(gallery)


def measure(run: Run, lfw: Lfw | None) -> dict:
    """Every figure of ``run``: one entry per backend and size, and the enrolment rates."""
    results: list[dict] = []
    base_url = run.pg_url
    server = None
    if "postgres" in run.backends and not base_url:
        base_url, server = start_postgres(run.workdir, run.shared_buffers)
    for size in run.sizes:
        dataset = make_dataset(size, lfw, run.queries, run.seed)
        exact = exact_nearest(dataset)
        for backend in run.backends:
            if backend == "sqlite":
                results.append(measure_sqlite(run, dataset, exact))
            else:
                results.append(measure_postgres(run, base_url, dataset, exact))
            print(json.dumps(results[-1]), flush=True)
    enrolment = {}
    if run.enrol_faces:
        for backend in run.backends:
            url = (
                f"sqlite:///{run.workdir / 'enrol-rate.db'}"
                if backend == "sqlite"
                else database_url(base_url, "gallery_speed_enrol")
            )
            enrolment[backend] = enrolment_rate(url, run.model, run.enrol_faces, run.batch, 7)
    return {"results": results, "enrolment": enrolment, "server": server}


# --- the whole request over HTTP -----------------------------------------------------------------


def http_identify(url: str, gallery: str, photos: list[Path], api_key: str, rounds: int) -> dict:
    """Wall time of ``POST /galleries/<gallery>/identify`` and of ``POST /cached_match`` on the
    same LFW photos (the reference: the photo's own ``/embeddings``), interleaved; p50, p99,
    the identify search stage and the ratio of the medians."""
    import requests

    session = requests.Session()
    if api_key:
        session.headers["Authorization"] = f"Bearer {api_key}"
    references = {}
    for photo in photos:
        answer = session.post(f"{url}/embeddings", files={"photo": photo.read_bytes()})
        answer.raise_for_status()
        references[photo] = answer.text
    identify, cached, search = [], [], []
    for round_ in range(rounds + 1):
        for photo in photos:
            data = photo.read_bytes()
            start = time.perf_counter()
            answer = session.post(f"{url}/galleries/{gallery}/identify", files={"sample": data})
            elapsed = (time.perf_counter() - start) * 1000
            answer.raise_for_status()
            stage = answer.json().get("latency_ms", {}).get("search")
            start = time.perf_counter()
            other = session.post(
                f"{url}/cached_match",
                files={"sample": data},
                data={"reference": references[photo]},
            )
            elapsed_cached = (time.perf_counter() - start) * 1000
            other.raise_for_status()
            if round_:  # the first round warms both paths
                identify.append(elapsed)
                cached.append(elapsed_cached)
                if stage is not None:
                    search.append(float(stage))
    result = {
        "identify": percentiles(identify),
        "cached_match": percentiles(cached),
        "ratio_p50": round(float(np.median(identify) / np.median(cached)), 3),
        **conditions(),
    }
    if search:
        result["identify_search_stage"] = percentiles(search)
    return result


def lfw_photos(count: int, seed: int) -> list[Path]:
    """``count`` LFW photos of different people, chosen with ``seed``."""
    people = sorted(p for p in (lfw_dir() / "images").iterdir() if p.is_dir())
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(people))[:count]
    return [sorted(people[i].glob("*.jpg"))[0] for i in sorted(chosen)]


# --- reporting ------------------------------------------------------------------------------------


def table(result: dict) -> str:
    """Markdown rows of the search figures (CPU: the searching thread's for SQLite, the server
    process's for PostgreSQL)."""
    lines = [
        "| backend | faces | setting | search p50 (ms) | p99 (ms) | CPU (ms) | recall@1 | load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in result.get("results", []):
        faces = f"{entry['faces']:,}"
        if entry["backend"] == "sqlite":
            rows = [("SQLite", "exact (int8 + rescoring)", entry["search"], entry["recall_at_1"])]
        else:
            index = entry["index"]
            graph = f"HNSW m {index.get('m')}, ef_construction {index.get('ef_construction')}"
            rows = [
                ("PostgreSQL", f"{graph}, ef_search {s['ef_search']}", s, s["recall_at_1"])
                for s in entry["searches"]
            ]
        for backend, setting, s, recall in rows:
            cpu = s.get("thread_cpu_p50_ms") if backend == "SQLite" else s.get("server_cpu_mean_ms")
            mark = " (loaded)" if s["loaded"] else ""
            lines.append(
                f"| {backend} | {faces} | {setting} | {s['p50_ms']} | {s['p99_ms']} | {cpu} | "
                f"{recall} | {s['load_average']}{mark} |"
            )
    return "\n".join(lines)


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v.replace("_", "")) for v in text.split(",") if v.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="gallery sizes")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="sqlite,postgres")
    parser.add_argument("--queries", type=int, default=300, help="held-out LFW queries")
    parser.add_argument("--ef-search", default=",".join(map(str, EF_SEARCHES)))
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmark_results" / "gallery")
    parser.add_argument("--pg-url", default="", help="a PostgreSQL with pgvector to use")
    parser.add_argument("--shared-buffers", default="4GB", help="of the started PostgreSQL")
    parser.add_argument("--build-memory", default="4GB", help="maintenance_work_mem of builds")
    parser.add_argument("--hnsw-m", type=int, default=HNSW_M, help="the index's graph degree")
    parser.add_argument("--ef-construction", type=int, default=HNSW_EF_CONSTRUCTION)
    parser.add_argument("--enrol-faces", type=int, default=1000, help="0: skip enrolment rates")
    parser.add_argument("--batch", type=int, default=500, help="faces per add_faces call")
    parser.add_argument("--reuse", action="store_true", help="keep galleries already loaded")
    parser.add_argument("--stop-postgres", action="store_true")
    parser.add_argument("--lfw-embeddings", type=Path, default=None, help="names, vectors .npz")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", default="", help="a running facematch: the whole-request part")
    parser.add_argument("--http-size", type=int, default=100_000, help="gallery speed-<size>")
    parser.add_argument("--http-photos", type=int, default=20)
    parser.add_argument("--http-rounds", type=int, default=5)
    parser.add_argument("--api-key", default=os.environ.get("FACEMATCH_API_KEY", ""))
    parser.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    args = parser.parse_args(argv)

    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    header = {
        "date": started,
        "command": "python -m benchmarking_utils.gallery_speed " + " ".join(argv or sys.argv[1:]),
        "commit": _commit(),
        "machine": machine(),
        "load_average_start": load_average(),
    }
    if args.url:
        photos = lfw_photos(args.http_photos, args.seed)
        http = http_identify(
            args.url.rstrip("/"), _gallery(args.http_size), photos, args.api_key, args.http_rounds
        )
        result = {**header, "whole_request": {"gallery": _gallery(args.http_size), **http}}
        print(json.dumps(result, indent=2))
        write_json(args.out, result)
        return 0

    lfw_path = args.lfw_embeddings or find_lfw_embeddings()
    lfw = load_lfw(lfw_path) if lfw_path else None
    args.workdir.mkdir(parents=True, exist_ok=True)
    run = Run(
        sizes=_ints(args.sizes),
        backends=tuple(b for b in args.backends.split(",") if b),
        queries=args.queries,
        ef_searches=_ints(args.ef_search),
        workdir=args.workdir,
        pg_url=args.pg_url,
        shared_buffers=args.shared_buffers,
        build_memory=args.build_memory,
        hnsw_m=args.hnsw_m,
        hnsw_ef_construction=args.ef_construction,
        enrol_faces=args.enrol_faces,
        batch=args.batch,
        reuse=args.reuse,
        seed=args.seed,
        model=Settings.from_env().model,
    )
    if set(run.backends) - set(BACKENDS):
        parser.error("--backends: sqlite and/or postgres")
    measured = measure(run, lfw)
    server = measured.pop("server")
    result = {
        **header,
        "data": {
            "lfw_embeddings": str(lfw_path) if lfw_path else None,
            "lfw_enrolled": 0 if lfw is None else len(make_dataset(0, lfw, 0, 0).enrolled),
            "queries": run.queries,
            "k": K,
            "filler": "unit vectors from a Gaussian fitted to the LFW embeddings"
            if lfw
            else "uniform random unit vectors",
        },
        **measured,
        "load_average_end": load_average(),
    }
    print(table(result))
    write_json(args.out, result)
    if server is not None and args.stop_postgres:
        server.cleanup_mode = "stop"
        server.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
