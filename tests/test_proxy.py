"""The shipped nginx config (deploy/nginx/) in front of a real Gunicorn: what nginx refuses
itself is answered as facematch's JSON error with the right status, while facematch's own JSON
errors pass through unchanged; its limits agree with the service's settings."""

from __future__ import annotations

import json
import os
import re
import runpy
import socket
from pathlib import Path

import pytest
import requests

from facematch.config import Settings
from tests.support import free_port, load_yaml

REPO = Path(__file__).resolve().parents[1]
SHIPPED = (REPO / "deploy" / "nginx" / "facematch.conf").read_text()


def directive(name: str) -> str:
    """The value of a directive the shipped server config sets exactly once."""
    values = re.findall(rf"^\s*{name}\s+([^;]+);", SHIPPED, re.M)
    assert len(values) == 1, (name, values)
    return values[0]


def raw_request(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is and read the answer to its end: status, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
            if length and len(body) >= int(length[1]):
                break
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split(" ")[1]), {k.lower(): v for k, v in headers.items()}, body


def assert_json_error(answer, status: int, code: str) -> None:
    got, headers, body = answer
    assert got == status, body
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"]


LIMIT = Settings().max_upload_bytes
#: Requests nginx refuses itself, each with the status and code of its JSON answer.
REFUSED = {
    "too-long-uri": (
        b"GET /ping?x=" + b"a" * 5000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        414,
        "uri_too_long",
    ),
    "too-large-header": (
        b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n",
        431,
        "headers_too_large",
    ),
    "malformed-request-line": (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    "bad-content-length": (
        b"POST /photo_match HTTP/1.1\r\nHost: t\r\nContent-Length: ten\r\n\r\n",
        400,
        "bad_request",
    ),
    "body-over-the-upload-limit": (
        b"POST /photo_match HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; "
        b"boundary=x\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1),
        413,
        "payload_too_large",
    ),
    "unknown-transfer-encoding": (
        b"POST /photo_match HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
        "not_implemented",
    ),
}


@pytest.fixture(scope="module")
def server(module_gunicorn):
    return module_gunicorn()


def test_body_limit_equals_the_upload_limit_and_is_kept_in_memory():
    assert directive("client_max_body_size") == f"{Settings().max_upload_mb:g}m"
    assert directive("client_body_buffer_size") == directive("client_max_body_size")


def test_proxy_waits_longer_than_gunicorn_lets_a_request_run():
    assert int(directive("proxy_read_timeout").rstrip("s")) > Settings().timeout


def variable(name: str) -> str:
    """The value the shipped config ``set``s ``$name`` to (exactly once)."""
    values = re.findall(rf"^\s*set\s+\${name}\s+([^;]+);", SHIPPED, re.M)
    assert len(values) == 1, (name, values)
    return values[0]


def test_the_request_deadline_lets_a_10_mb_upload_arrive_at_1_mbit_s_and_is_bounded():
    """A kiosk on a poor 3G uplink (1 Mbit/s) sends the largest upload in 84 s; the deadline
    for it (grace + length at the minimum rate) leaves it time, and is still a bound."""
    largest = Settings().max_upload_bytes
    deadline = int(variable("facematch_request_grace_s")) + largest / int(
        variable("facematch_body_min_rate")
    )
    assert largest * 8 / 1_000_000 < deadline <= 180


def test_a_chunked_body_gets_the_deadline_of_the_largest_body_allowed():
    """A chunked body announces no length: the Lua block takes client_max_body_size's."""
    assigned = re.findall(r"length = (\d+) \* 1024 \* 1024", SHIPPED)
    assert [f"{m}m" for m in assigned] == [directive("client_max_body_size")]


def test_gunicorn_accepts_every_request_line_and_header_nginx_forwards(monkeypatch):
    for name in [n for n in os.environ if n.startswith("FACEMATCH_")]:
        monkeypatch.delenv(name)
    gunicorn = runpy.run_path(str(REPO / "gunicorn.conf.py"))
    _, size = directive("large_client_header_buffers").split()
    buffer = int(size.rstrip("k")) * 1024  # a request line or header line must fit in one
    assert gunicorn["limit_request_line"] >= buffer - len("\r\n")
    assert gunicorn["limit_request_field_size"] >= buffer - len("\r\n")
    assert gunicorn["keepalive"] == Settings().keepalive
    assert gunicorn["control_socket_disable"] is True


@pytest.mark.parametrize("name", REFUSED)
def test_nginx_answers_what_it_refuses_with_a_json_error(server, nginx, name):
    request, status, code = REFUSED[name]
    proxy = nginx(upstream_port=server.port)
    assert_json_error(raw_request(proxy.port, request), status, code)


@pytest.mark.parametrize("name", ["too-long-uri", "malformed-request-line", "bad-content-length"])
def test_gunicorn_reached_directly_answers_the_same_requests_with_html(server, name):
    """Why nginx answers them: Gunicorn's own error pages are not JSON."""
    status, headers, _ = raw_request(server.port, REFUSED[name][0])
    assert status == 400 or status == 414
    assert headers["content-type"].startswith("text/html")


def test_an_unreachable_service_is_a_json_502(nginx):
    proxy = nginx(upstream_port=free_port())  # nothing listens there
    assert_json_error(raw_request(proxy.port, b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n"), 502,
                      "upstream_unavailable")  # fmt: skip


def test_the_services_json_errors_pass_through_unchanged(server, nginx):
    proxy = nginx(upstream_port=server.port)
    for method, path in (("POST", "/photo_match"), ("GET", "/no-such-route")):
        direct = requests.request(method, server.url + path, timeout=30)
        proxied = requests.request(method, proxy.url + path, timeout=30)
        assert direct.status_code in (400, 404)
        assert (proxied.status_code, proxied.json()) == (direct.status_code, direct.json())


def test_the_longest_uri_nginx_forwards_reaches_the_service_not_gunicorns_html(server, nginx):
    proxy = nginx(upstream_port=server.port)
    prefix, suffix = b"GET /", b" HTTP/1.1\r\n"
    longest = b"a" * (4096 - len(prefix) - len(suffix))  # one 4 KB header buffer
    status, headers, body = raw_request(
        proxy.port, prefix + longest + suffix + b"Host: t\r\nConnection: close\r\n\r\n"
    )
    assert (status, headers["content-type"]) == (404, "application/json")
    assert json.loads(body)["error"]["code"] == "not_found"
    too_long = raw_request(proxy.port, prefix + longest + b"a" + suffix + b"Host: t\r\n\r\n")
    assert_json_error(too_long, 414, "uri_too_long")


def test_the_error_page_location_is_not_reachable_from_outside(server, nginx):
    proxy = nginx(upstream_port=server.port)
    answer = raw_request(proxy.port, b"GET /_facematch_error.json HTTP/1.1\r\nHost: t\r\n\r\n")
    assert_json_error(answer, 404, "not_found")


def test_compose_serves_the_api_only_through_nginx_with_the_shipped_config():
    services = load_yaml(REPO / "docker-compose.yml")["services"]
    api, proxy = services["api"], services["nginx"]
    assert "ports" not in api and api["expose"] == [str(Settings().port)]
    assert proxy["ports"] == [f"{Settings().port}:80"]
    assert proxy["depends_on"] == ["api"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":") for volume in proxy["volumes"])
    assert mounts == {
        "./deploy/nginx/facematch.conf": "/etc/nginx/conf.d/default.conf",
        "./deploy/nginx/upstream-compose.conf": "/etc/nginx/conf.d/upstream.conf",
    }
    upstream = (REPO / "deploy" / "nginx" / "upstream-compose.conf").read_text()
    assert f"server api:{Settings().port};" in upstream
