"""The upload cap at its boundary, through a real Gunicorn: a body of at most
``FACEMATCH_MAX_UPLOAD_MB`` bytes is read whole (as nginx's ``client_max_body_size`` lets it
through), one byte more is 413 ``payload_too_large`` on every route, before the key check, as
nginx answers it. Never a 500, and no traceback in the log for a client's error."""

from __future__ import annotations

import pytest
import requests

from facematch.config import Settings
from tests.support import KEY_A, every_route

SMALL_MB = 0.01  # a 10,485-byte cap: every route, every method, in seconds
SMALL_CAP = Settings(max_upload_mb=SMALL_MB).max_upload_bytes
DEFAULT_CAP = Settings().max_upload_bytes
BOUNDARY = "cap"


def multipart_of_size(size: int) -> bytes:
    """A multipart form of exactly ``size`` bytes: one file part ``pad`` filling it."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="pad"; filename="pad.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    return head + b"x" * (size - len(head) - len(tail)) + tail


def send(url: str, method: str, size: int, key: str | None) -> requests.Response:
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    if key:
        headers["X-API-Key"] = key
    body = multipart_of_size(size)
    response = requests.request(method, url, data=body, headers=headers, timeout=60)
    assert response.request.headers["Content-Length"] == str(size)
    return response


def answer(response: requests.Response) -> tuple[int, str | None]:
    """The status and, for an error with a body, its JSON error code (never a 500)."""
    assert response.status_code != 500, response.text
    if response.status_code < 400 or response.request.method == "HEAD":
        return response.status_code, None
    assert response.headers["Content-Type"] == "application/json", response.text
    return response.status_code, response.json()["error"]["code"]


def routes(app) -> list[tuple[str, str]]:
    """(method, path) for every method of every route, and a POST to a route that is none."""
    return [(method, path) for method, path, _ in every_route(app)] + [("POST", "/nonexistent")]


@pytest.fixture(scope="module")
def small_cap_server(module_gunicorn):
    return module_gunicorn(FACEMATCH_MAX_UPLOAD_MB=str(SMALL_MB), FACEMATCH_API_KEYS=KEY_A)


@pytest.mark.parametrize("key", [KEY_A, None], ids=["with-key", "without-key"])
def test_a_body_of_exactly_the_cap_is_answered_as_one_byte_less_on_every_route(
    app, small_cap_server, key
):
    for method, path in routes(app):
        url = small_cap_server.url + path
        below = answer(send(url, method, SMALL_CAP - 1, key))
        at = answer(send(url, method, SMALL_CAP, key))
        assert at == below, (method, path)
        if key is None and below[0] == 401:
            assert below[1] in ("unauthorized", None), (method, path)
    assert "Traceback" not in small_cap_server.log()


@pytest.mark.parametrize("key", [KEY_A, None], ids=["with-key", "without-key"])
def test_one_byte_over_the_cap_is_413_on_every_route_before_the_key_check(
    app, small_cap_server, key
):
    for method, path in routes(app):
        over = answer(send(small_cap_server.url + path, method, SMALL_CAP + 1, key))
        expected_code = None if method == "HEAD" else "payload_too_large"
        assert over == (413, expected_code), (method, path)
    assert "Traceback" not in small_cap_server.log()


def test_a_chunked_body_may_hold_the_cap_and_not_one_byte_more(small_cap_server):
    """Without a Content-Length the bytes read are counted: the same line at the same byte."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "X-API-Key": KEY_A}
    answers = {}
    for size in (SMALL_CAP, SMALL_CAP + 1):
        body = multipart_of_size(size)
        chunks = iter([body[: size // 2], body[size // 2 :]])  # no length: sent chunked
        response = requests.post(
            small_cap_server.url + "/photo_match", data=chunks, headers=headers, timeout=60
        )
        assert response.request.headers["Transfer-Encoding"] == "chunked"
        answers[size] = answer(response)
    assert answers == {SMALL_CAP: (400, "missing_field"), SMALL_CAP + 1: (413, "payload_too_large")}
    assert "Traceback" not in small_cap_server.log()


def test_the_default_cap_through_the_shipped_nginx(module_gunicorn, nginx):
    server = module_gunicorn(FACEMATCH_API_KEYS=KEY_A)
    proxy = nginx(upstream_port=server.port)
    url = proxy.url + "/photo_match"
    assert DEFAULT_CAP == 10 * 1024 * 1024
    assert answer(send(url, "POST", DEFAULT_CAP, KEY_A)) == (400, "missing_field")
    assert answer(send(url, "POST", DEFAULT_CAP, None)) == (401, "unauthorized")
    assert answer(send(proxy.url + "/nonexistent", "POST", DEFAULT_CAP, None)) == (
        401,
        "unauthorized",
    )
    assert answer(send(url, "POST", DEFAULT_CAP + 1, KEY_A)) == (413, "payload_too_large")
    assert "Traceback" not in server.log()
