"""What the tests share that is not a fixture: LFW pairs, test keys, request and file helpers.

Fixtures live in conftest.py and in the tests.servers plugin; test modules import from here,
never from each other.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import subprocess
import zlib
from pathlib import Path

from PIL import Image

from benchmarking_utils.local_gunicorn import free_port  # noqa: F401 - the one free_port

REPO = Path(__file__).resolve().parents[1]
JS_YAML = REPO / ".tools" / "grafana-schema" / "node_modules" / "js-yaml" / "bin" / "js-yaml.js"
MISSING = "run scripts/test-deps/monitoring.sh (scripts/test.sh does) to install {}"


def image_bytes(image: Image.Image, fmt: str = "JPEG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


SAME = ("Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Aaron_Peirsol/Aaron_Peirsol_0002.jpg")


SAME_2 = (
    "Abdullatif_Sener/Abdullatif_Sener_0001.jpg",
    "Abdullatif_Sener/Abdullatif_Sener_0002.jpg",
)


DIFFERENT = ("Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0001.jpg")


DIFFERENT_2 = ("Aaron_Guiel/Aaron_Guiel_0001.jpg", "Reese_Witherspoon/Reese_Witherspoon_0003.jpg")


def files(**named: bytes) -> dict:
    return {key: (io.BytesIO(value), f"{key}.jpg") for key, value in named.items()}


def photo_match(client, reference: bytes, sample: bytes, **form):
    return client.post("/photo_match", data={**files(reference=reference, sample=sample), **form})


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    assert response.json["error"]["code"] == code
    assert response.json["error"]["message"]


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def embedding_of(client, photo: bytes, fmt: str):
    response = client.post("/embeddings", data={**files(photo=photo), "format": fmt})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def cached_match(client, reference, sample: bytes, as_file: bool = True, **form):
    if as_file:
        data = {"reference": (io.BytesIO(reference), "reference.bin")}
    else:
        data = {"reference": reference}
    return client.post("/cached_match", data={**data, **files(sample=sample), **form})


KEY_A = "key-a-0123456789abcdef"


KEY_B = "key-b-0123456789abcdef"


SIGN_OLD = "signing-old-0123456789abcdef"


SIGN_NEW = "signing-new-0123456789abcdef"


def dumps(value) -> bytes:
    return json.dumps(value).encode()


def load_yaml(path: Path):
    """Parse YAML with js-yaml (installed beside the schema; the venv has no YAML parser)."""
    assert JS_YAML.exists(), MISSING.format("js-yaml")
    result = subprocess.run(
        ["node", str(JS_YAML), str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"{path}: {result.stderr}"
    return json.loads(result.stdout)


def keys_file_text(keys: dict[str, tuple[str, list[str], list[str]]]) -> str:
    """A FACEMATCH_KEYS_FILE holding ``{key: (id, roles, galleries)}`` (the keys as SHA-256)."""
    return "\n".join(
        f'[[keys]]\nid = "{key_id}"\nsha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
        f"roles = {json.dumps(roles)}\ngalleries = {json.dumps(galleries)}\n"
        for key, (key_id, roles, galleries) in keys.items()
    )


#: A value for each path parameter of the app's routes (``filename``: a file the page serves).
PATH_VALUES = {"gallery": "g", "subject": "s", "face": "f", "filename": "app.css"}


def every_route(app) -> list[tuple[str, str, str]]:
    """(method, path, endpoint) for every method of every rule in the app's url_map, the path
    parameters filled from ``PATH_VALUES``."""
    routes = []
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: PATH_VALUES[m[1]], rule.rule)
        routes += [(method, path, rule.endpoint) for method in sorted(rule.methods)]
    return routes
