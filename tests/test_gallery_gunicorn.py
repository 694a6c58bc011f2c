"""The gallery routes through a real Gunicorn, on a real SQLite file and a real PostgreSQL with
pgvector: every route and error, erasure checked in the database itself, the policy, several
workers and several servers seeing each other's enrolments at once, and the database down.

One server per backend serves most tests (API keys and signing keys on, a subject may hold 3
faces). Each test uses its own gallery. Requests use fresh connections (``requests`` without a
session), so with several workers they land on any of them.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests
from PIL import Image

from facematch.gallery.postgres import CALL_TIMEOUT_S
from tests.servers import Postgres, Subscriber, wait_until
from tests.support import DIFFERENT, KEY_A, SAME, SIGN_NEW, dumps, image_bytes

AUTH = {"Authorization": f"Bearer {KEY_A}"}
AARON = [f"Aaron_Peirsol/Aaron_Peirsol_000{i}.jpg" for i in (1, 2, 3, 4)]
ABEL = DIFFERENT[1]  # Abel Pacheco
COLIN = [f"Colin_Powell/Colin_Powell_00{i}.jpg" for i in (38, 40)]
LAURA = [f"Laura_Bush/Laura_Bush_00{i}.jpg" for i in (16, 21)]  # near: 1:N is strict
GERHARD = [f"Gerhard_Schroeder/Gerhard_Schroeder_00{i}.jpg" for i in (25, 27)]
STRANGER = "Reese_Witherspoon/Reese_Witherspoon_0001.jpg"  # never enrolled
MAX_SUBJECT_FACES = 3


# --- servers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend(request, tmp_path_factory):
    """(name, gallery URL) of a fresh database of each backend, for the module's server."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("gallery") / "gallery.db"
        return "sqlite", f"sqlite:///{path}"
    return "postgres", request.getfixturevalue("postgres_server").database()


@pytest.fixture(scope="module")
def server(module_gunicorn, backend):
    return module_gunicorn(
        FACEMATCH_GALLERY_URL=backend[1],
        FACEMATCH_API_KEYS=KEY_A,
        FACEMATCH_SIGNING_KEYS=SIGN_NEW,
        FACEMATCH_GALLERY_MAX_SUBJECT_FACES=str(MAX_SUBJECT_FACES),
        FACEMATCH_ALLOW_ALL_FACES="true",
        FACEMATCH_MAX_SAMPLE_FACES="3",
        FACEMATCH_VERIFY_RULES="centroid,knn",
    )


@pytest.fixture
def gallery(request) -> str:
    """A gallery id of this test's own."""
    return "g-" + request.node.name.split("[")[0][5:60]


def photo(lfw, name: str) -> bytes:
    return (lfw / "images" / name).read_bytes()


def call(method: str, url: str, headers=AUTH, **kwargs) -> requests.Response:
    return requests.request(method, url, headers=headers, timeout=60, **kwargs)


def enrol(server, lfw, gallery: str, subject: str, name: str) -> requests.Response:
    url = f"{server.url}/galleries/{gallery}/subjects/{subject}/faces"
    return call("POST", url, files={"photo": ("p.jpg", photo(lfw, name))})


def identify(server, lfw, gallery: str, name: str, **form) -> requests.Response:
    url = f"{server.url}/galleries/{gallery}/identify"
    return call("POST", url, files={"sample": ("s.jpg", photo(lfw, name))}, data=form)


def verify(server, lfw, gallery: str, subject: str, name: str, **form) -> requests.Response:
    url = f"{server.url}/galleries/{gallery}/subjects/{subject}/verify"
    return call("POST", url, files={"sample": ("s.jpg", photo(lfw, name))}, data=form)


def assert_error(response: requests.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == code
    return response.json()["error"]["message"]


def blank_jpeg() -> bytes:
    return image_bytes(Image.new("RGB", (250, 250), (200, 180, 160)))


def rows_of(url: str, gallery: str, subject: str) -> dict[str, int]:
    """How many rows of ``subject`` the database holds, read with its own client."""
    queries = {
        "faces": "SELECT count(*) FROM faces WHERE gallery = {p} AND subject = {p}",
        "subjects": "SELECT count(*) FROM subjects WHERE gallery = {p} AND id = {p}",
    }
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
            return {
                table: connection.execute(sql.format(p="?"), (gallery, subject)).fetchone()[0]
                for table, sql in queries.items()
            }
    with psycopg.connect(url) as connection:
        return {
            table: connection.execute(sql.format(p="%s"), (gallery, subject)).fetchone()[0]
            for table, sql in queries.items()
        }


# --- every route --------------------------------------------------------------------------


def test_enrol_list_read_update_and_delete_subjects(server, backend, lfw, gallery):
    first = enrol(server, lfw, gallery, "aaron", AARON[0])
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["gallery"], body["subject"], body["faces"]) == (gallery, "aaron", 1)
    assert body["source"]["image_size"] == [250, 250] and body["source"]["probability"] > 0.9
    x1, y1, x2, y2 = body["source"]["box"]
    assert 0 <= x1 < x2 <= 250 and 0 <= y1 < y2 <= 250
    assert enrol(server, lfw, gallery, "aaron", AARON[1]).json()["faces"] == 2
    for subject, name in (("abel", ABEL), ("colin", COLIN[0]), ("laura", LAURA[0])):
        assert enrol(server, lfw, gallery, subject, name).status_code == 201

    base = f"{server.url}/galleries/{gallery}/subjects"
    page = call("GET", base, params={"limit": 2}).json()
    assert [s["subject"] for s in page["subjects"]] == ["aaron", "abel"] and page["next"] == "abel"
    assert page["subjects"][0] == {"subject": "aaron", "name": None, "faces": 2}
    rest = call("GET", base, params={"after": page["next"]}).json()
    assert [s["subject"] for s in rest["subjects"]] == ["colin", "laura"] and rest["next"] is None

    put = call("PUT", f"{base}/aaron", json={"name": "Aaron P.", "metadata": {"team": "usa"}})
    assert put.status_code == 200 and put.json()["faces"] == 2, put.text
    created = call("PUT", f"{base}/nobody-yet", json={"name": "New"})
    assert created.status_code == 200 and created.json()["faces"] == 0

    detail = call("GET", f"{base}/aaron").json()
    assert (detail["name"], detail["metadata"]) == ("Aaron P.", {"team": "usa"})
    assert [f["face"] for f in detail["faces"]] == [body["face"], detail["faces"][1]["face"]]
    assert all(f["model"] == "casia-webface" and len(f["box"]) == 4 for f in detail["faces"])
    assert not any("vector" in f or "embedding" in f for f in detail["faces"])

    face = detail["faces"][1]["face"]
    deleted = call("DELETE", f"{base}/aaron/faces/{face}")
    assert deleted.status_code == 200
    assert deleted.json()["deleted"] == {
        "gallery": gallery,
        "subject": "aaron",
        "face": face,
        "faces": 1,
    }
    assert call("GET", f"{base}/aaron").json()["faces"][0]["face"] == body["face"]
    assert "face" in assert_error(call("DELETE", f"{base}/aaron/faces/{face}"), 404, "not_found")

    assert rows_of(backend[1], gallery, "aaron") == {"faces": 1, "subjects": 1}
    erased = call("DELETE", f"{base}/aaron")
    assert erased.status_code == 200
    assert erased.json() == {"deleted": {"gallery": gallery, "subject": "aaron", "faces": 1}}
    assert rows_of(backend[1], gallery, "aaron") == {"faces": 0, "subjects": 0}
    assert "aaron" in assert_error(call("GET", f"{base}/aaron"), 404, "not_found")

    gone = call("DELETE", f"{server.url}/galleries/{gallery}")
    assert gone.json() == {"deleted": {"gallery": gallery, "subjects": 4, "faces": 3}}
    assert rows_of(backend[1], gallery, "abel") == {"faces": 0, "subjects": 0}
    assert gallery in assert_error(call("GET", base), 404, "not_found")


def test_enrol_a_signed_embedding_but_not_an_unsigned_or_altered_one(server, lfw, gallery):
    made = call("POST", server.url + "/embeddings", files={"photo": ("p.jpg", photo(lfw, SAME[0]))})
    signed = made.json()
    url = f"{server.url}/galleries/{gallery}/subjects/aaron/faces"
    enrolled = call("POST", url, data={"embedding": dumps(signed).decode()})
    assert enrolled.status_code == 201, enrolled.text
    assert enrolled.json()["source"] == {"box": None, "probability": None, "image_size": None}
    unsigned = call("POST", url, files={"embedding": ("e.json", dumps(signed["embedding"]))})
    assert_error(unsigned, 400, "unsigned_reference")
    altered = {**signed, "embedding": signed["embedding"][::-1]}
    assert_error(
        call("POST", url, data={"embedding": dumps(altered).decode()}), 403, "bad_signature"
    )
    both = call("POST", url, data={"embedding": dumps(signed).decode()}, files={"photo": b"x"})
    assert_error(both, 400, "invalid_parameter")
    assert_error(call("POST", url), 400, "missing_field")
    assert identify(server, lfw, gallery, SAME[1]).json()["identified"] == "aaron"


def test_verify_against_all_of_a_subjects_faces(server, lfw, gallery):
    for name in AARON[:2]:
        enrol(server, lfw, gallery, "aaron", name)
    enrol(server, lfw, gallery, "abel", ABEL)
    same = verify(server, lfw, gallery, "aaron", AARON[2])
    assert same.status_code == 200, same.text
    body = same.json()
    assert body["match"] is True and body["distance"] <= body["threshold"]
    assert (body["references"], body["rule"], body["metric"]) == (2, "centroid", "cosine")
    assert body["faces"]["sample"]["count"] == 1
    assert body["latency_ms"]["search"] >= 0 and body["latency_ms"]["detection"] > 0
    other = verify(server, lfw, gallery, "abel", AARON[2]).json()
    assert other["match"] is False and other["distance"] > other["threshold"]
    knn = verify(server, lfw, gallery, "aaron", AARON[2], rule="knn").json()
    assert knn["rule"] == "knn" and knn["match"] is True and knn["votes"] >= 1
    strict = verify(server, lfw, gallery, "aaron", AARON[2], threshold="0").json()
    assert strict["match"] is False and strict["threshold"] == 0.0


def test_identify_names_the_nearest_subject_or_nobody(server, lfw, gallery):
    people = {"aaron": AARON[0], "abel": ABEL, "colin": COLIN[0], "laura": LAURA[0]}
    for subject, name in people.items():
        enrol(server, lfw, gallery, subject, name)
    found = identify(server, lfw, gallery, AARON[1])
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["identified"] == "aaron"
    distances = [c["distance"] for c in body["candidates"]]
    assert [c["subject"] for c in body["candidates"]][0] == "aaron" and len(distances) == 4
    assert distances == sorted(distances)
    assert [c["match"] for c in body["candidates"]] == [d <= body["threshold"] for d in distances]
    assert body["latency_ms"]["search"] >= 0 and body["faces"]["sample"]["count"] == 1
    assert len(identify(server, lfw, gallery, COLIN[1], top_k="2").json()["candidates"]) == 2
    assert identify(server, lfw, gallery, COLIN[1]).json()["identified"] == "colin"
    nobody = identify(server, lfw, gallery, STRANGER).json()
    assert nobody["identified"] is None and len(nobody["candidates"]) == 4
    assert not any(c["match"] for c in nobody["candidates"])


def test_identify_every_face_of_a_group_photo(server, lfw, gallery):
    enrol(server, lfw, gallery, "aaron", AARON[0])
    enrol(server, lfw, gallery, "laura", LAURA[0])
    canvas = Image.new("RGB", (500, 250), (128, 128, 128))
    canvas.paste(Image.open(lfw / "images" / AARON[1]), (0, 0))
    canvas.paste(Image.open(lfw / "images" / LAURA[1]), (250, 0))
    url = f"{server.url}/galleries/{gallery}/identify"
    files = {"sample": ("s.jpg", image_bytes(canvas))}
    response = call("POST", url, files=files, data={"sample_faces": "all"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    identified = [r["identified"] for r in results]  # LFW photos may hold a face behind
    assert {"aaron", "laura"} <= set(identified) and len(results) <= 3
    assert [r["index"] for r in results] == list(range(len(results)))


# --- errors -------------------------------------------------------------------------------


def test_unknown_gallery_or_subject_is_404_naming_which(server, lfw, gallery):
    enrol(server, lfw, gallery, "aaron", AARON[0])
    unknown = f"{server.url}/galleries/nowhere"
    for response in (
        call("GET", unknown + "/subjects"),
        call("GET", unknown + "/subjects/aaron"),
        call("DELETE", unknown),
        identify(server, lfw, "nowhere", AARON[1]),
        verify(server, lfw, "nowhere", "aaron", AARON[1]),
    ):
        assert "'nowhere'" in assert_error(response, 404, "not_found")
    base = f"{server.url}/galleries/{gallery}/subjects/ghost"
    for response in (
        call("GET", base),
        call("DELETE", base),
        call("DELETE", base + "/faces/1"),
        verify(server, lfw, gallery, "ghost", AARON[1]),
    ):
        assert "'ghost'" in assert_error(response, 404, "not_found")


def test_a_photo_without_a_face_is_422(server, lfw, gallery):
    enrol(server, lfw, gallery, "aaron", AARON[0])
    blank = {"files": {"photo": ("b.jpg", blank_jpeg())}}
    url = f"{server.url}/galleries/{gallery}/subjects/aaron"
    assert_error(call("POST", url + "/faces", **blank), 422, "no_face")
    sample = {"files": {"sample": ("b.jpg", blank_jpeg())}}
    assert_error(call("POST", url + "/verify", **sample), 422, "no_face")
    identify_url = f"{server.url}/galleries/{gallery}/identify"
    assert_error(call("POST", identify_url, **sample), 422, "no_face")


@pytest.mark.parametrize("bad", ["x" * 129, "a%20b", "caf%C3%A9", "a+b", "%2A"])
def test_an_id_outside_the_charset_or_too_long_is_400(server, bad):
    for url in (
        f"{server.url}/galleries/{bad}/subjects",
        f"{server.url}/galleries/ok/subjects/{bad}",
    ):
        assert_error(call("GET", url), 400, "invalid_id")
    assert_error(
        call("DELETE", f"{server.url}/galleries/ok/subjects/s/faces/{bad}"), 400, "invalid_id"
    )


@pytest.mark.parametrize("top_k", ["0", "101", "abc", "-1", "1.5", "５"])
def test_top_k_out_of_range_is_400(server, lfw, gallery, top_k):
    response = identify(server, lfw, gallery, AARON[0], top_k=top_k)
    assert "top_k" in assert_error(response, 400, "invalid_parameter")


@pytest.mark.parametrize("limit", ["0", "1001", "x"])
def test_limit_out_of_range_is_400(server, gallery, limit):
    response = call("GET", f"{server.url}/galleries/{gallery}/subjects", params={"limit": limit})
    assert "limit" in assert_error(response, 400, "invalid_parameter")


def test_a_subject_past_its_face_limit_is_409_naming_the_limit(server, lfw, gallery):
    made = call("POST", server.url + "/embeddings", files={"photo": ("p.jpg", photo(lfw, SAME[0]))})
    url = f"{server.url}/galleries/{gallery}/subjects/aaron/faces"
    data = {"embedding": dumps(made.json()).decode()}
    for count in range(1, MAX_SUBJECT_FACES + 1):
        assert call("POST", url, data=data).json()["faces"] == count
    message = assert_error(call("POST", url, data=data), 409, "gallery_full")
    assert str(MAX_SUBJECT_FACES) in message


def test_gallery_routes_need_an_api_key(server, gallery):
    response = call("GET", f"{server.url}/galleries/{gallery}/subjects", headers={})
    assert_error(response, 401, "unauthorized")


# --- the decision policy ------------------------------------------------------------------


def test_a_looser_threshold_is_403_on_verify_and_identify_as_on_photo_match(server, lfw, gallery):
    enrol(server, lfw, gallery, "abel", ABEL)
    for threshold in ("0.7", "1", "2"):
        one_to_one = [
            verify(server, lfw, gallery, "abel", AARON[0], threshold=threshold),
            call(
                "POST",
                server.url + "/photo_match",
                files={"reference": photo(lfw, ABEL), "sample": photo(lfw, AARON[0])},
                data={"threshold": threshold},
            ),
        ]
        for response in one_to_one:
            assert "0.6397" in assert_error(response, 403, "threshold_not_allowed")
    for threshold in ("0.36", "0.6397", "2"):  # 1:N: the identify threshold is the limit
        response = identify(server, lfw, gallery, AARON[0], threshold=threshold)
        assert "0.3458" in assert_error(response, 403, "threshold_not_allowed")
    assert identify(server, lfw, gallery, AARON[0], threshold="0.1").status_code == 200
    euclidean = identify(server, lfw, gallery, AARON[0], metric="euclidean", threshold="1.9")
    assert_error(euclidean, 400, "invalid_parameter")
    assert_error(
        verify(server, lfw, gallery, "abel", AARON[0], rule="nearest"), 403, "rule_not_allowed"
    )


# --- several workers, several servers -----------------------------------------------------


def test_two_workers_on_sqlite_see_each_others_enrolments_at_once(gunicorn, broker, lfw, tmp_path):
    """Requests on fresh connections land on both workers (the pids come from the metrics
    messages): every read right after an enrolment answered by the other worker finds it."""
    subscriber = Subscriber(broker)
    server = gunicorn(
        FACEMATCH_WORKERS="2",
        FACEMATCH_GALLERY_URL=f"sqlite:///{tmp_path / 'gallery.db'}",
        FACEMATCH_MQTT_HOST="127.0.0.1",
        FACEMATCH_MQTT_PORT=str(broker.port),
    )
    server.wait_for_workers(2)
    made = requests.post(
        server.url + "/embeddings", files={"photo": ("p.jpg", photo(lfw, AARON[0]))}, timeout=60
    )
    embedding = dumps(made.json()).decode()
    subscriber.wait_for(1)

    def pid_of(response: requests.Response) -> int:
        count = pid_of.seen = pid_of.seen + 1
        message = subscriber.wait_for(count)[count - 1]
        assert message["status"] == response.status_code
        return message["pid"]

    pid_of.seen = 1
    crossings = set()
    enrolled = 0
    for i in range(40):
        base = f"{server.url}/galleries/site/subjects/s{i}"
        added = requests.post(base + "/faces", data={"embedding": embedding}, timeout=60)
        assert added.status_code == 201, added.text
        writer = pid_of(added)
        enrolled += 1
        read = requests.get(base, timeout=60)
        assert read.status_code == 200 and len(read.json()["faces"]) == 1, read.text
        reader = pid_of(read)
        if writer != reader:
            crossings.add((writer, reader))
        if len(crossings) == 2:
            break
    assert len(crossings) == 2, "requests did not land on both workers both ways"
    assert {pid for pair in crossings for pid in pair} == server.workers()

    laura = requests.post(
        f"{server.url}/galleries/site/subjects/laura/faces",
        files={"photo": ("p.jpg", photo(lfw, LAURA[0]))},
        timeout=60,
    )
    writer = pid_of(laura)
    for _ in range(20):
        found = identify(server, lfw, "site", LAURA[1], top_k="3")
        assert found.json()["identified"] == "laura"
        if pid_of(found) != writer:
            break
    else:
        pytest.fail("no identify landed on the other worker")
    message = subscriber.messages[-1]
    assert message["endpoint"] == "/galleries/<gallery>/identify"
    assert message["gallery"]["size"] == enrolled + 1 and message["gallery"]["candidates"] == 3
    assert message["latency_ms"]["search"] >= 0 and message["match"] is True
    subscriber.close()


def test_two_servers_sharing_postgres_see_each_others_enrolments_at_once(gunicorn, postgres, lfw):
    one = gunicorn(FACEMATCH_GALLERY_URL=postgres)
    two = gunicorn(FACEMATCH_GALLERY_URL=postgres)
    for subject, name in (("aaron", AARON[0]), ("gerhard", GERHARD[0])):
        assert enrol(one, lfw, "shared", subject, name).status_code == 201
        assert (
            identify(
                two, lfw, "shared", {"aaron": AARON[1], "gerhard": GERHARD[1]}[subject]
            ).json()["identified"]
            == subject
        )
    assert call("DELETE", f"{two.url}/galleries/shared/subjects/aaron").status_code == 200
    assert identify(one, lfw, "shared", AARON[1]).json()["identified"] is None


# --- the database down --------------------------------------------------------------------


def one_to_one_seconds(server, lfw, rounds: int = 3) -> float:
    """The median time of /photo_match on the same pair (the 1:1 path, no store)."""
    times = []
    for _ in range(rounds):
        started = time.monotonic()
        response = call(
            "POST",
            server.url + "/photo_match",
            headers={},
            files={"reference": photo(lfw, SAME[0]), "sample": photo(lfw, SAME[1])},
        )
        times.append(time.monotonic() - started)
        assert response.status_code == 200 and response.json()["match"] is True
    return statistics.median(times)


def assert_gallery_routes_unavailable(server, lfw) -> None:
    """Every gallery route answers 503 with Retry-After, each within 5 s."""
    checks = [
        lambda: call("GET", f"{server.url}/galleries/site/subjects", headers={}),
        lambda: call("GET", f"{server.url}/galleries/site/subjects/aaron", headers={}),
        lambda: identify(server, lfw, "site", AARON[1]),
        lambda: verify(server, lfw, "site", "aaron", AARON[1]),
        lambda: enrol(server, lfw, "site", "aaron", AARON[1]),
        lambda: call("DELETE", f"{server.url}/galleries/site", headers={}),
    ]
    for check in checks:
        started = time.monotonic()
        response = check()
        assert time.monotonic() - started < 5
        assert_error(response, 503, "gallery_unavailable")
        assert 1 <= int(response.headers["Retry-After"]) <= 5


def test_postgres_stopped_gallery_routes_503_and_the_one_to_one_routes_are_not_slowed(
    gunicorn, lfw
):
    database = Postgres()
    try:
        server = gunicorn(FACEMATCH_GALLERY_URL=database.url)
        assert enrol(server, lfw, "site", "aaron", AARON[0]).status_code == 201
        baseline = one_to_one_seconds(server, lfw)
        database.server.cleanup()  # PostgreSQL stops; the worker still holds its connection
        assert_gallery_routes_unavailable(server, lfw)
        assert one_to_one_seconds(server, lfw) < 2 * baseline + 0.5
        made = call(
            "POST", server.url + "/embeddings", headers={}, files={"photo": photo(lfw, SAME[0])}
        )
        assert made.status_code == 200
    finally:
        database.stop()


def connections_to(database: Postgres, pids: set[int]) -> dict[int, int]:
    """How many connections each of ``pids`` holds to the database's server processes, read
    from the kernel's table of unix sockets and their peers (``ss``)."""
    owners: dict[str, set[int]] = {}
    peers: dict[str, str] = {}
    listing = subprocess.run(["ss", "-xpn"], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8:
            peers[fields[5]] = fields[7]
            owners[fields[5]] = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
    backends = set(database.processes()[1:])
    counts = dict.fromkeys(pids, 0)
    for inode, holders in owners.items():
        if holders & backends:
            for pid in owners.get(peers[inode], set()) & pids:
                counts[pid] += 1
    return counts


def timed(request) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = request()
    return response, time.monotonic() - started


def test_postgres_frozen_every_gallery_route_503_within_the_deadline_on_every_worker_then_recovers(
    gunicorn, lfw
):
    """Every PostgreSQL process SIGSTOPped (a hung server: its kernel keeps the connections open
    and never answers) while both workers hold open connections on both their threads."""
    database = Postgres()
    try:
        url = database.database()
        server = gunicorn(FACEMATCH_GALLERY_URL=url, FACEMATCH_WORKERS="2")
        workers = server.wait_for_workers(2)
        base = f"{server.url}/galleries/site/subjects"
        for subject, name in (("aaron", AARON[0]), ("aaron", AARON[1]), ("colin", COLIN[0])):
            assert enrol(server, lfw, "site", subject, name).status_code == 201
        face = call("GET", f"{base}/aaron").json()["faces"][0]["face"]
        with ThreadPoolExecutor(8) as pool:  # until every thread of both workers holds one
            for _ in range(30):
                held = connections_to(database, workers)
                if min(held.values()) >= 2:
                    break
                list(pool.map(lambda _: call("GET", base), range(8)))
        assert min(held.values()) >= 2, held
        baseline = one_to_one_seconds(server, lfw)
        routes = {
            "enrol": lambda: enrol(server, lfw, "site", "aaron", AARON[2]),
            "put subject": lambda: call("PUT", f"{base}/laura", json={"name": "Laura"}),
            "get subject": lambda: call("GET", f"{base}/aaron"),
            "list subjects": lambda: call("GET", base),
            "verify": lambda: verify(server, lfw, "site", "aaron", AARON[3]),
            "identify": lambda: identify(server, lfw, "site", AARON[3]),
            "delete face": lambda: call("DELETE", f"{base}/aaron/faces/{face}"),
            "delete subject": lambda: call("DELETE", f"{base}/colin"),
            "delete gallery": lambda: call("DELETE", f"{server.url}/galleries/site"),
        }
        bound = CALL_TIMEOUT_S + 2  # the deadline, plus the request's own work on a busy CPU
        waited = []  # seconds each gallery route took to answer 503
        with database.frozen(), ThreadPoolExecutor(2) as pool:
            one_to_one = pool.submit(lambda: [one_to_one_seconds(server, lfw) for _ in range(4)])
            for _ in range(2):  # each route twice, one at a time: a worker keeps a free thread
                for name, route in routes.items():
                    response, seconds = timed(route)
                    waited.append(seconds)
                    assert seconds < bound, (name, seconds)
                    assert_error(response, 503, "gallery_unavailable")
                    assert 1 <= int(response.headers["Retry-After"]) <= 5
            assert max(one_to_one.result()) < 2 * baseline + 0.5
            dropped = connections_to(database, workers)
            assert all(dropped[pid] < held[pid] for pid in workers), (held, dropped)
        thawed = time.monotonic()
        wait_until(lambda: call("GET", f"{base}/aaron").status_code == 200, 5 + bound)
        first = time.monotonic() - thawed
        time.sleep(max(0.0, thawed + 5 - time.monotonic()))  # every worker's hold-off is over
        answers = [timed(route) for route in list(routes.values())[:6] * 2]
        failures = [(r.status_code, r.text[:200], s) for r, s in answers if r.status_code >= 300]
        assert failures == [], failures
        assert rows_of(url, "site", "aaron") == {"faces": 4, "subjects": 1}
        assert rows_of(url, "site", "colin") == {"faces": 1, "subjects": 1}
        print(
            f"503 in at most {max(waited):.2f} s (sorted: {sorted(round(w, 2) for w in waited)}); "
            f"1:1 {baseline:.2f} s, stopped {max(one_to_one.result()):.2f} s; first 2xx "
            f"{first:.2f} s after SIGCONT; from 5 s on every route 2xx, at most "
            f"{max(seconds for _, seconds in answers):.2f} s per route"
        )
    finally:
        database.stop()


@pytest.fixture
def silent_port():
    """A port that accepts TCP connections and never answers (a host that hangs)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def test_unreachable_postgres_the_service_starts_gallery_routes_503_one_to_one_unaffected(
    gunicorn, lfw, silent_port
):
    server = gunicorn(FACEMATCH_GALLERY_URL=f"postgresql://facematch@127.0.0.1:{silent_port}/db")
    baseline = one_to_one_seconds(server, lfw)
    assert_gallery_routes_unavailable(server, lfw)
    slow_gallery = threading.Thread(target=lambda: identify(server, lfw, "site", AARON[1]))
    time.sleep(5.5)  # past Retry-After: the next gallery call tries the database again
    slow_gallery.start()
    assert one_to_one_seconds(server, lfw) < 2 * baseline + 0.5
    slow_gallery.join()
