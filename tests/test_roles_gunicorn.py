"""Keys with roles and gallery scopes through a real Gunicorn, on SQLite and on PostgreSQL: the
role x route x gallery matrix, and keys rotated by HUP while requests keep coming.

The matrix: three scoped keys (verify, enrol, admin; each on galleries ``site-a*``) call every
route on an in-scope gallery (``site-a``), an out-of-scope gallery that exists (``site-b``) and
one that does not (``site-z``). Only the cells the roles allow answer 2xx; every other cell is
403 ``forbidden``; the out-of-scope answers are identical for the existing and the missing
gallery. A simple-mode key (``FACEMATCH_API_KEYS``) sets the galleries up: it holds every role.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import requests

from facematch.api import security
from facematch.api.app import OPEN_ENDPOINTS
from tests.support import KEY_A, SAME, keys_file_text

ALL = KEY_A  # the simple mode: every role on every gallery
ROLE_KEYS = {
    "verify": "matrix-verify-0123456789",
    "enrol": "matrix-enrol-01234567890",
    "admin": "matrix-admin-01234567890",
}
IN, OUT, MISSING = "site-a", "site-b", "site-z"


def call(method: str, url: str, key: str | None, **kwargs) -> requests.Response:
    headers = {"X-API-Key": key} if key else {}
    return requests.request(method, url, headers=headers, timeout=60, **kwargs)


@dataclass(frozen=True)
class Route:
    """One route of the matrix: its endpoint, method, path (``{g}``: the gallery) and a
    ``prepare(gallery)`` that makes what the request needs and returns its path ids and
    request arguments."""

    endpoint: str
    method: str
    path: str
    prepare: Callable[[str], tuple[dict, dict]]


class Fixture:
    """The server and what the routes send: a reference embedding, photos, subjects."""

    def __init__(self, server, lfw):
        self.url = server.url
        self.reference_photo = (lfw / "images" / SAME[0]).read_bytes()
        self.sample = (lfw / "images" / SAME[1]).read_bytes()
        answer = call("POST", f"{self.url}/embeddings", ALL, files={"photo": self.photo()})
        assert answer.status_code == 200, answer.text
        self.reference = answer.content
        for gallery in (IN, OUT):
            self.enrol(gallery, "s1")
        export = call("GET", f"{self.url}/galleries/{IN}/export", ALL)
        assert export.status_code == 200, export.text
        self.export = export.content
        self.serial = 0

    def photo(self, photo: bytes | None = None) -> tuple[str, bytes]:
        return ("p.jpg", photo or self.reference_photo)

    def enrol(self, gallery: str, subject: str) -> int:
        answer = call(
            "POST",
            f"{self.url}/galleries/{gallery}/subjects/{subject}/faces",
            ALL,
            files={"embedding": ("e.json", self.reference)},
        )
        assert answer.status_code == 201, answer.text
        return answer.json()["face"]

    def fresh(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial}"

    def routes(self) -> list[Route]:
        sample = {"files": {"sample": ("s.jpg", self.sample)}}

        def none(gallery):
            return {}, {}

        def with_photo(field):
            return lambda gallery: ({}, {"files": {field: self.photo()}})

        def new_face(gallery):
            face = self.enrol(gallery, "tmp") if gallery != MISSING else 1
            return {"s": "tmp", "f": face}, {}

        def new_subject(gallery):
            subject = self.fresh("tmp")
            if gallery != MISSING:
                self.enrol(gallery, subject)
            return {"s": subject}, {}

        def import_target(gallery):
            target = self.fresh(f"{gallery}-import") if gallery == IN else gallery
            return {"target": target}, {"data": self.export}

        def new_gallery(gallery):
            target = f"{gallery}-drop" if gallery == IN else gallery
            if gallery == IN:
                self.enrol(target, "s1")
            return {"target": target}, {}

        return [
            Route("api.health", "GET", "/health", none),
            Route("api.openapi", "GET", "/openapi.json", none),
            Route("security.key", "GET", "/key", none),
            Route(
                "api.photo_match",
                "POST",
                "/photo_match",
                lambda g: (
                    {},
                    {"files": {"reference": self.photo(), "sample": ("s.jpg", self.sample)}},
                ),
            ),
            Route(
                "api.cached_match",
                "POST",
                "/cached_match",
                lambda g: (
                    {},
                    {"files": {"reference": ("r.json", self.reference), **sample["files"]}},
                ),
            ),
            Route("api.embeddings", "POST", "/embeddings", with_photo("photo")),
            Route("api.faces", "POST", "/faces", with_photo("photo")),
            Route(
                "gallery.add_face",
                "POST",
                "/galleries/{g}/subjects/s2/faces",
                lambda g: ({}, {"files": {"embedding": ("e.json", self.reference)}}),
            ),
            Route(
                "gallery.put_subject",
                "PUT",
                "/galleries/{g}/subjects/s1",
                lambda g: ({}, {"json": {"name": "Subject One"}}),
            ),
            Route("gallery.get_subject", "GET", "/galleries/{g}/subjects/s1", none),
            Route("gallery.list_subjects", "GET", "/galleries/{g}/subjects", none),
            Route(
                "gallery.verify",
                "POST",
                "/galleries/{g}/subjects/s1/verify",
                lambda g: ({}, sample),
            ),
            Route("gallery.identify", "POST", "/galleries/{g}/identify", lambda g: ({}, sample)),
            Route(
                "gallery.delete_face", "DELETE", "/galleries/{g}/subjects/{s}/faces/{f}", new_face
            ),
            Route("gallery.delete_subject", "DELETE", "/galleries/{g}/subjects/{s}", new_subject),
            Route("gallery.delete_gallery", "DELETE", "/galleries/{target}", new_gallery),
            Route("gallery.audit", "GET", "/galleries/{g}/audit", none),
            Route("gallery.export_gallery", "GET", "/galleries/{g}/export", none),
            Route("gallery.import_gallery", "POST", "/galleries/{target}/import", import_target),
        ]


@dataclass(frozen=True)
class Cell:
    role: str
    endpoint: str
    gallery: str | None
    status: int
    body: dict


def run_matrix(fixture: Fixture) -> list[Cell]:
    cells = []
    for route in fixture.routes():
        galleries = (
            [IN, OUT, MISSING] if "{g}" in route.path or "{target}" in route.path else [None]
        )
        for role, key in ROLE_KEYS.items():
            for gallery in galleries:
                ids, arguments = route.prepare(gallery)
                path = route.path.format(g=gallery, **ids)
                answer = call(route.method, fixture.url + path, key, **arguments)
                json_answer = answer.headers.get("Content-Type", "").startswith("application/json")
                body = answer.json() if json_answer else {}
                cells.append(Cell(role, route.endpoint, gallery, answer.status_code, body))
    return cells


def allowed(cell: Cell) -> bool:
    role = security.required_role(cell.endpoint)
    return (role is None or role == cell.role) and cell.gallery in (None, IN)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def matrix(request, module_gunicorn, tmp_path_factory, lfw) -> tuple[Fixture, list[Cell]]:
    directory = tmp_path_factory.mktemp("roles")
    if request.param == "sqlite":
        gallery_url = f"sqlite:///{directory / 'gallery.db'}"
    else:
        gallery_url = request.getfixturevalue("postgres_server").database()
    keys = directory / "keys.toml"
    keys.write_text(
        keys_file_text(
            {key: (f"{role}-key", [role], ["site-a*"]) for role, key in ROLE_KEYS.items()}
        )
    )
    server = module_gunicorn(
        FACEMATCH_GALLERY_URL=gallery_url, FACEMATCH_API_KEYS=ALL, FACEMATCH_KEYS_FILE=str(keys)
    )
    fixture = Fixture(server, lfw)
    return fixture, run_matrix(fixture)


def test_only_the_cells_a_role_allows_answer_2xx(matrix):
    _, cells = matrix
    wrong = [
        cell
        for cell in cells
        if (200 <= cell.status < 300) != allowed(cell)
        or (not allowed(cell) and cell.body.get("error", {}).get("code") != "forbidden")
    ]
    assert wrong == []


def test_out_of_scope_answers_are_identical_for_existing_and_missing_galleries(matrix):
    _, cells = matrix
    answers = {(c.role, c.endpoint, c.gallery): (c.status, c.body) for c in cells}
    differing = [
        (role, endpoint)
        for role, endpoint, gallery in answers
        if gallery == OUT and answers[role, endpoint, OUT] != answers[role, endpoint, MISSING]
    ]
    assert differing == [] and any(gallery == OUT for _, _, gallery in answers)


def test_the_matrix_calls_every_route_that_needs_a_key(matrix, app):
    fixture, _ = matrix
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()} - {"static"}
    assert {route.endpoint for route in fixture.routes()} == endpoints - set(OPEN_ENDPOINTS)


# --- key rotation by HUP ----------------------------------------------------------------------

OLD, NEW = "rotate-old-0123456789ab", "rotate-new-0123456789ab"


class Load:
    """Threads sending requests with the key ``self.key`` names, each on a new connection (so
    they reach every worker), recording every answer's status (0: no answer)."""

    def __init__(self, url: str, key: str, photo: bytes, threads: int = 4):
        self.url, self.key, self.photo = url, key, photo
        self.answers: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, index: int) -> None:
        while not self._stop.is_set():
            key = self.key
            try:
                if index % 2:
                    answer = call("GET", f"{self.url}/key", key)
                else:
                    answer = call(
                        "POST", f"{self.url}/faces", key, files={"photo": ("p.jpg", self.photo)}
                    )
                status = answer.status_code
            except requests.RequestException:
                status = 0
            self.answers.append((key, status))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def rotate(server, keys_file, keys: dict) -> None:
    """Rewrite the keys file, send HUP and wait for the new workers."""
    old_workers = server.workers()
    keys_file.write_text(keys_file_text(keys))
    os.kill(server.pid, signal.SIGHUP)
    server.wait_for_workers(len(old_workers), other_than=old_workers)


def test_keys_rotated_by_hup_under_load_drop_no_request_and_refuse_the_old_key(
    gunicorn, keys_toml, lfw
):
    keys_file = keys_toml({OLD: ("old", ["verify"], ["*"])})
    server = gunicorn(FACEMATCH_KEYS_FILE=str(keys_file), FACEMATCH_WORKERS="2")
    photo = (lfw / "images" / SAME[0]).read_bytes()
    with Load(server.url, OLD, photo) as load:
        time.sleep(1)
        rotate(
            server, keys_file, {OLD: ("old", ["verify"], ["*"]), NEW: ("new", ["verify"], ["*"])}
        )
        time.sleep(1)
        load.key = NEW  # the clients move to the new key
        time.sleep(1)
        rotate(server, keys_file, {NEW: ("new", ["verify"], ["*"])})
        time.sleep(1)
    failed = [answer for answer in load.answers if answer[1] != 200]
    assert failed == [] and len(load.answers) > 20
    assert "Exception in worker process" not in server.log()  # the old workers left cleanly
    assert {key for key, _ in load.answers} == {OLD, NEW}
    for _ in range(6):  # new connections: both workers
        assert call("GET", f"{server.url}/key", OLD).status_code == 401
        assert call("GET", f"{server.url}/key", NEW).json()["id"] == "new"


def test_a_malformed_keys_file_on_hup_keeps_the_keys_in_force(gunicorn, keys_toml):
    keys_file = keys_toml({OLD: ("old", ["verify"], ["*"])})
    server = gunicorn(FACEMATCH_KEYS_FILE=str(keys_file))
    old_workers = server.workers()
    digest = "ab" * 32
    keys_file.write_text(f'[[keys]]\nid = "x"\nsha256 = "{digest}"\nroles = ["root"]\n')
    os.kill(server.pid, signal.SIGHUP)
    server.wait_for_workers(len(old_workers), other_than=old_workers)
    assert call("GET", f"{server.url}/key", OLD).json()["id"] == "old"
    log = server.log()
    assert "keys not reloaded" in log and "'roles'" in log and digest not in log


def audit_events(url: str, gallery: str) -> list[dict]:
    events, after = [], None
    while True:
        params = {"limit": 100, **({"after": after} if after else {})}
        page = call("GET", f"{url}/galleries/{gallery}/audit", ALL, params=params)
        assert page.status_code == 200, page.text
        events += page.json()["events"]
        after = page.json()["next"]
        if after is None:
            return events


def test_the_audit_names_the_key_of_every_allowed_write_and_decision_and_no_refused_one(matrix):
    fixture, _ = matrix
    done = {(event["action"], event["key"]) for event in audit_events(fixture.url, IN)}
    expected = {
        ("enrol", "enrol-key"),
        ("update", "enrol-key"),
        ("verify", "verify-key"),
        ("identify", "verify-key"),
        ("delete_face", "admin-key"),
        ("delete_subject", "admin-key"),
        ("export", "admin-key"),
    }
    assert expected <= done
    role_keys = {f"{role}-key" for role in ROLE_KEYS}
    refused = {(action, key) for action, key in done if key in role_keys} - expected
    assert refused == set()
    outside = {event["key"] for event in audit_events(fixture.url, OUT)}
    assert outside and not outside & role_keys  # only the set-up key touched site-b
