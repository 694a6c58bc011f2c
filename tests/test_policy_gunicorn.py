"""The threat model's decision-policy rows, proven through a real Gunicorn (gthread worker).

One server for the module, with API keys and signing keys on and the decision policy at its
defaults; a second one where the operator allows ``sample_faces=all`` with a small bound. Every
attack input is made here (collages of LFW faces, raw multipart bodies, altered signatures).
"""

from __future__ import annotations

import socket

import pytest
import requests
from PIL import Image

from tests.support import DIFFERENT, KEY_A, SAME, SIGN_NEW, image_bytes

AUTH = {"Authorization": f"Bearer {KEY_A}"}
PERSON_A, PERSON_B = DIFFERENT  # Aaron Peirsol, Abel Pacheco
CLEAR_REFUSALS = {
    400: {"invalid_parameter"},
    403: {"threshold_not_allowed", "sample_faces_not_allowed"},
}


@pytest.fixture(scope="module")
def server(module_gunicorn):
    return module_gunicorn(FACEMATCH_API_KEYS=KEY_A, FACEMATCH_SIGNING_KEYS=SIGN_NEW)


@pytest.fixture(scope="module")
def signed_reference_of_a(server, lfw) -> dict:
    photo = (lfw / "images" / PERSON_A).read_bytes()
    response = requests.post(
        server.url + "/embeddings", files={"photo": ("a.jpg", photo)}, headers=AUTH, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.json()["signature"].startswith("v1.")
    return response.json()


def collage(lfw, names: list[str]) -> bytes:
    """The LFW photos ``names`` side by side on one canvas (250 x 250 each)."""
    canvas = Image.new("RGB", (250 * len(names), 250), (128, 128, 128))
    for i, name in enumerate(names):
        canvas.paste(Image.open(lfw / "images" / name), (250 * i, 0))
    return image_bytes(canvas)


def strangers(lfw, count: int) -> list[str]:
    """The first photo of ``count`` people other than person A (sorted, so always the same)."""
    people = sorted(p.name for p in (lfw / "images").iterdir() if p.name != "Aaron_Peirsol")
    return [f"{name}/{name}_0001.jpg" for name in people[:count]]


FORCING_ATTEMPTS = [
    {"threshold": "2"},
    {"threshold": "2.0"},
    {"threshold": " 2 "},
    {"threshold": "2\n"},
    {"threshold": "１"},
    {"threshold": "١"},
    {"threshold": "١٫٩"},
    {"threshold": "1e309"},
    {"threshold": "1e0"},
    {"threshold": "nan"},
    {"threshold": "inf"},
    {"threshold": "-0"},
    {"threshold": "0x1"},
    {"threshold": "0.6470"},
    {"threshold": "1.5"},
    {"metric": "euclidean"},
    {"metric": "euclidean", "threshold": "1.99"},
    {"metric": "euclidean", "threshold": "1.3"},
    {"metric": "euclidean", "threshold": "1.1312"},
    {"metric": "EUCLIDEAN", "threshold": "1.99"},
    {"sample_faces": "all"},
    {"sample_faces": "all", "threshold": "2", "metric": "euclidean"},
    {"sample_faces": "ALL"},
]


def answer_is_a_non_match_or_a_clear_refusal(response) -> None:
    body = response.json()
    if response.status_code == 200:
        assert body["match"] is False, body
        assert body["distance"] > body["threshold"]
        return
    assert body["error"]["code"] in CLEAR_REFUSALS.get(response.status_code, ()), body
    assert body["error"]["message"]


def test_the_pair_is_a_non_match_that_a_threshold_of_2_would_have_turned(
    server, signed_reference_of_a, lfw
):
    """The attacks below can fail: at threshold 2 (cosine) or 1.99 (euclidean) this pair would
    match, and the collage holds faces closer to A than B is."""
    response = requests.post(
        server.url + "/cached_match",
        data={"reference": _json(signed_reference_of_a)},
        files={"sample": ("b.jpg", (lfw / "images" / PERSON_B).read_bytes())},
        headers=AUTH,
        timeout=60,
    )
    body = response.json()
    assert response.status_code == 200 and body["match"] is False
    assert body["threshold"] < body["distance"] < 2 and (2 * body["distance"]) ** 0.5 < 1.99


@pytest.mark.parametrize("route", ["/cached_match", "/photo_match"])
def test_no_request_parameter_turns_a_non_match_into_a_match(
    server, signed_reference_of_a, lfw, route
):
    sample_b = (lfw / "images" / PERSON_B).read_bytes()
    group = collage(lfw, [PERSON_B, *strangers(lfw, 7)])
    for fields in FORCING_ATTEMPTS:
        sample = group if "sample_faces" in fields else sample_b
        if route == "/cached_match":
            data = {"reference": _json(signed_reference_of_a), **fields}
            files = {"sample": ("b.jpg", sample)}
        else:
            data = dict(fields)
            files = {
                "reference": ("a.jpg", (lfw / "images" / PERSON_A).read_bytes()),
                "sample": ("b.jpg", sample),
            }
        response = requests.post(
            server.url + route, data=data, files=files, headers=AUTH, timeout=60
        )
        answer_is_a_non_match_or_a_clear_refusal(response)
    # a threshold in the query string or a repeated form field does not get past the policy
    repeated = requests.post(
        server.url + route + "?threshold=2",
        data=[
            ("threshold", "2"),
            ("threshold", "0.1"),
            *_reference_field(route, signed_reference_of_a),
        ],
        files=_files_for(route, lfw, sample_b),
        headers=AUTH,
        timeout=60,
    )
    answer_is_a_non_match_or_a_clear_refusal(repeated)
    assert repeated.status_code == 403


def _reference_field(route: str, reference: dict) -> list:
    return [("reference", _json(reference))] if route == "/cached_match" else []


def _files_for(route: str, lfw, sample: bytes) -> dict:
    files = {"sample": ("b.jpg", sample)}
    if route == "/photo_match":
        files["reference"] = ("a.jpg", (lfw / "images" / PERSON_A).read_bytes())
    return files


def _json(value: dict) -> str:
    import json

    return json.dumps(value)


def test_the_refusals_say_what_the_limit_is(server, signed_reference_of_a, lfw):
    response = requests.post(
        server.url + "/cached_match",
        data={"reference": _json(signed_reference_of_a), "threshold": "2"},
        files={"sample": ("b.jpg", (lfw / "images" / PERSON_B).read_bytes())},
        headers=AUTH,
        timeout=60,
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "threshold_not_allowed"
    assert "0.6397" in response.json()["error"]["message"]


def test_where_the_operator_allows_all_faces_at_most_the_bound_are_compared(module_gunicorn, lfw):
    bounded = module_gunicorn(FACEMATCH_ALLOW_ALL_FACES="true", FACEMATCH_MAX_SAMPLE_FACES="3")
    group = collage(lfw, strangers(lfw, 6))
    response = requests.post(
        bounded.url + "/photo_match",
        data={"sample_faces": "all"},
        files={
            "reference": ("a.jpg", (lfw / "images" / PERSON_A).read_bytes()),
            "sample": ("group.jpg", group),
        },
        timeout=120,
    )
    body = response.json()
    assert response.status_code == 200, body
    assert body["faces"]["sample"]["count"] == 6
    assert len(body["sample_faces"]) == 3
    assert body["match"] is False


def test_a_signature_with_a_non_canonical_last_character_is_refused(
    server, signed_reference_of_a, lfw
):
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    token = signed_reference_of_a["signature"]
    last = alphabet.index(token[-1])
    sample = (lfw / "images" / SAME[1]).read_bytes()
    statuses = []
    for bits in (0, 1, 2, 3):
        spelling = token[:-1] + alphabet[last - last % 4 + bits]
        response = requests.post(
            server.url + "/cached_match",
            data={"reference": _json({**signed_reference_of_a, "signature": spelling})},
            files={"sample": ("a2.jpg", sample)},
            headers=AUTH,
            timeout=60,
        )
        statuses.append((response.status_code, response.json().get("error", {}).get("code")))
    assert statuses == [(200, None)] + [(403, "bad_signature")] * 3


def test_options_is_an_empty_204_with_allow(server):
    response = requests.options(server.url + "/photo_match", headers=AUTH, timeout=10)
    assert response.status_code == 204
    assert set(response.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    assert response.content == b"" and "Content-Type" not in response.headers


# --- a 413 or 401 on a keep-alive connection ---


def multipart(parts: int, boundary: str = "facematch-test") -> bytes:
    """A multipart body of ``parts`` tiny text fields (about 60 bytes each)."""
    body = b"".join(
        b'--%s\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % (boundary.encode(), i)
        for i in range(parts)
    )
    return body + b"--%s--\r\n" % boundary.encode()


def exchange(sock: socket.socket, request: bytes) -> tuple[dict[str, str], bytes]:
    """Send one request; read one response (headers, body) or raise ``ConnectionError``."""
    sock.sendall(request)
    reader = sock.makefile("rb")
    status = reader.readline()
    if not status:
        raise ConnectionError("the server closed the connection")
    headers = {}
    for line in iter(reader.readline, b"\r\n"):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    headers[":status"] = status.split()[1].decode()
    body = reader.read(int(headers.get("content-length", 0)))
    return headers, body


def post(path: str, body: bytes, auth: bool = True) -> bytes:
    key = f"X-API-Key: {KEY_A}\r\n" if auth else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: facematch\r\n{key}"
        f"Content-Type: multipart/form-data; boundary=facematch-test\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


PING = f"GET /ping HTTP/1.1\r\nHost: facematch\r\nX-API-Key: {KEY_A}\r\n\r\n".encode()


@pytest.mark.parametrize(
    "request_bytes,status,code",
    [
        (post("/photo_match", multipart(10_000)), "413", "too_many_parts"),
        (post("/photo_match", multipart(1_001)), "413", "too_many_parts"),
        (post("/photo_match", multipart(10_000), auth=False), "401", "unauthorized"),
    ],
    ids=["10000-parts", "1001-parts", "401-before-the-body"],
)
def test_a_refused_body_leaves_the_connection_usable_or_says_it_closes(
    server, request_bytes, status, code
):
    """Gunicorn's gthread worker drains at most 64 KiB of a body the app left unread; past that
    it closed the connection after a response that said ``keep-alive`` (the finding: 578 KB of
    10,000 parts). The app now reads the rest of a body within the upload cap."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        headers, body = exchange(sock, request_bytes)
        assert headers[":status"] == status and code.encode() in body
        assert headers["connection"] in ("keep-alive", "close")
        if headers["connection"] == "close":
            assert sock.recv(1) == b""  # said close, and closed
            return
        follow_up, body = exchange(sock, PING)  # said keep-alive: the socket still serves
        assert follow_up[":status"] == "200" and body.strip() == b'{"status":"ok"}'


def test_the_413_for_too_many_parts_says_parts_not_megabytes(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        _, body = exchange(sock, post("/photo_match", multipart(10_000)))
    assert b"1000 parts" in body and b"MB" not in body


def test_a_body_declared_over_the_upload_cap_is_refused_with_connection_close(server):
    """The app refuses it unread, so Gunicorn closes the connection: the 413 must say so
    (gunicorn_hooks.pre_request) rather than ``keep-alive`` followed by a dead socket."""
    declared = 11 * 1024 * 1024  # over the default 10 MB cap
    head = (
        f"POST /photo_match HTTP/1.1\r\nHost: facematch\r\nX-API-Key: {KEY_A}\r\n"
        f"Content-Type: multipart/form-data; boundary=facematch-test\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        headers, body = exchange(sock, head + multipart(1_000)[:65_536])
        assert headers[":status"] == "413" and b"payload_too_large" in body
        assert headers["connection"] == "close"
        assert sock.recv(1) == b""
