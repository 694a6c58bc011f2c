"""openapi.json: served as written, covers every route, and the real responses match it.

The last tests hand the document to schemathesis, which generates requests (valid and invalid)
for every operation, sends them to the app in-process, and checks each response: never a 5xx,
a documented status, content type, headers and body schema. ``MAX_EXAMPLES`` bounds the run.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks as openapi_checks

from facematch.api.app import create_app
from facematch.engine import decoding
from tests.support import (
    DIFFERENT,
    KEY_A,
    SAME,
    SIGN_NEW,
    assert_error,
    cached_match,
    dumps,
    embedding_of,
    files,
    image_bytes,
    photo_match,
    png_declaring,
)

REPO = Path(__file__).resolve().parents[1]
DOCUMENT = json.loads((REPO / "openapi.json").read_text())
MAX_EXAMPLES = 100  # per operation; about 1-2 s each on 2 cores (decoding fails fast)
CHECKS = [
    not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.negative_data_rejection,
    openapi_checks.missing_required_header,
]


def test_served_document_is_the_repository_file(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.json == DOCUMENT


def test_document_is_valid_openapi_3():
    schemathesis.openapi.from_dict(DOCUMENT).validate()
    assert DOCUMENT["openapi"].startswith("3.")


def test_every_route_is_documented_and_every_documented_route_exists(app):
    served = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, item in DOCUMENT["paths"].items() for method in item}
    assert served == documented


def test_every_error_code_the_server_can_raise_is_documented():
    from facematch import errors

    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.FacematchError)
    }
    text = json.dumps(DOCUMENT["components"]["responses"])
    assert not [code for code in codes | {"internal_error"} if f"`{code}`" not in text]


def test_every_error_the_service_raises_has_its_status_in_the_api_table():
    from facematch import errors
    from facematch.api.errors import STATUS

    raised = {
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.FacematchError)
    }
    assert raised - {errors.FacematchError} == set(STATUS)


# --- photo formats: what the document names is what the decoder opens ----------------------

Image.init()
PILLOW_FORMATS = set(Image.OPEN) | set(Image.SAVE)


def photo_fields() -> dict[str, set[str]]:
    """'METHOD path field' -> the image formats its description names, for every uploaded file
    field whose description names any (the photos; not the embeddings)."""
    fields = {}
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            properties = content.get("multipart/form-data", {}).get("schema", {})
            for name, field in properties.get("properties", {}).items():
                words = re.findall(r"[A-Za-z0-9]+", field.get("description", ""))
                named = {word.upper() for word in words} & PILLOW_FORMATS
                binary = field.get("format") == "binary"  # or a burst's array of files
                binary = binary or field.get("items", {}).get("format") == "binary"
                if binary and named:
                    fields[f"{method.upper()} {path} {name}"] = named
    return fields


DOCUMENTED_FORMATS = sorted(set().union(*photo_fields().values()))


def encoded_in(fmt: str, image: Image.Image) -> bytes | None:
    """``image`` saved as ``fmt`` in the first mode that format takes; None if it takes none."""
    for mode in ("RGB", "L", "1"):
        try:
            return image_bytes(image.convert(mode), fmt)
        except (OSError, ValueError, KeyError):
            continue
    return None


SYNTHETIC = Image.radial_gradient("L").convert("RGB").resize((64, 64))
# Formats Pillow writes that the document does not name, each as a file. MPO is left out: it is a
# JPEG file (its first image is a plain JPEG), opened as JPEG like a camera's.
UNNAMED = {
    fmt: data
    for fmt in sorted(set(Image.SAVE) - set(DOCUMENTED_FORMATS) - {"MPO"})
    if (data := encoded_in(fmt, SYNTHETIC)) is not None
}


def test_every_photo_field_names_the_formats_the_decoder_opens_and_no_other():
    fields = photo_fields()
    assert len(fields) == 8, sorted(fields)  # the 1:1 and gallery routes' photos
    assert fields == dict.fromkeys(fields, set(decoding.FORMATS))


@pytest.mark.parametrize("fmt", DOCUMENTED_FORMATS)
def test_every_format_the_document_names_is_accepted(client, face_bytes, fmt):
    photo = encoded_in(fmt, Image.open(io.BytesIO(face_bytes(SAME[0]))))
    response = client.post("/faces", data=files(photo=photo))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["faces"]


def test_the_unnamed_formats_are_the_ones_pillow_writes():
    assert {"GIF", "BMP", "TIFF", "ICO", "JPEG2000", "PPM", "TGA"} <= set(UNNAMED)


@pytest.mark.parametrize("fmt", sorted(UNNAMED))
def test_a_format_the_document_does_not_name_is_refused_with_415(client, fmt):
    response = client.post("/faces", data=files(photo=UNNAMED[fmt]))
    assert_error(response, 415, "unsupported_image")


@pytest.fixture(scope="module")
def document_schema():
    return schemathesis.openapi.from_dict(DOCUMENT)


def assert_conforms(document_schema, path: str, method: str, response) -> None:
    """The status is documented for this operation and the body and headers match it."""
    operation = document_schema[path][method]
    assert str(response.status_code) in DOCUMENT["paths"][path][method.lower()]["responses"], (
        f"{method} {path} answered an undocumented {response.status_code}"
    )
    operation.validate_response(response)


@pytest.fixture
def signing_client(settings, engine):
    return create_app(settings.replace(signing_keys=SIGN_NEW), engine=engine).test_client()


def test_real_success_responses_match_the_document(
    settings, engine, client, signing_client, face_bytes, document_schema
):
    reference, sample = face_bytes(SAME[0]), face_bytes(SAME[1])
    assert_conforms(document_schema, "/ping", "GET", client.get("/ping"))
    assert_conforms(document_schema, "/health", "GET", client.get("/health"))
    assert_conforms(document_schema, "/openapi.json", "GET", client.get("/openapi.json"))
    assert_conforms(document_schema, "/", "GET", client.get("/"))
    for form in ({}, {"crops": "true", "max_faces": "2"}):
        listed = client.post("/faces", data={**files(photo=_two_faces(face_bytes)), **form})
        assert listed.json["count"] == 2
        assert_conforms(document_schema, "/faces", "POST", listed)
    no_face = client.post("/faces", data=files(photo=_blank_jpeg()))
    assert no_face.json["count"] == 0
    assert_conforms(document_schema, "/faces", "POST", no_face)
    for pair in (SAME, DIFFERENT):
        response = photo_match(client, face_bytes(pair[0]), face_bytes(pair[1]))
        assert_conforms(document_schema, "/photo_match", "POST", response)
    all_faces = create_app(settings.replace(allow_all_faces=True), engine=engine).test_client()
    canvas_response = photo_match(
        all_faces,
        reference,
        _two_faces(face_bytes),
        sample_faces="all",
        metric="euclidean",
        threshold="1.1",
    )
    assert "sample_faces" in canvas_response.json
    assert_conforms(document_schema, "/photo_match", "POST", canvas_response)
    for app_client in (client, signing_client):
        for fmt in ("json", "npy", "pt"):
            stored = embedding_of(app_client, reference, fmt)
            assert_conforms(document_schema, "/embeddings", "POST", stored)
            form = (
                {"signature": stored.headers["X-Facematch-Signature"]}
                if (fmt != "json" and "X-Facematch-Signature" in stored.headers)
                else {}
            )
            matched = cached_match(app_client, stored.get_data(), sample, **form)
            assert matched.status_code == 200
            assert_conforms(document_schema, "/cached_match", "POST", matched)


def _two_faces(face_bytes) -> bytes:
    from PIL import Image
    from support import image_bytes

    canvas = Image.new("RGB", (500, 250), (128, 128, 128))
    canvas.paste(Image.open(io.BytesIO(face_bytes(DIFFERENT[1]))), (0, 0))
    canvas.paste(Image.open(io.BytesIO(face_bytes(SAME[1]))), (250, 0))
    return image_bytes(canvas)


def test_real_error_responses_match_the_document(
    settings, engine, client, signing_client, face_bytes, document_schema
):
    sample = face_bytes(SAME[1])
    keyed = create_app(settings.replace(api_keys=KEY_A), engine=engine).test_client()
    small = create_app(settings.replace(max_upload_mb=0.05), engine=engine).test_client()
    blank = _blank_jpeg()
    signed = embedding_of(signing_client, face_bytes(SAME[0]), "json").json
    cases = [
        ("/health", "GET", 401, keyed.get("/health")),
        ("/openapi.json", "GET", 401, keyed.get("/openapi.json")),
        ("/photo_match", "POST", 401, photo_match(keyed, sample, sample)),
        ("/photo_match", "POST", 400, client.post("/photo_match", data=files(reference=sample))),
        ("/photo_match", "POST", 400, photo_match(client, sample, sample, threshold="abc")),
        ("/photo_match", "POST", 403, photo_match(client, sample, sample, threshold="1")),
        ("/photo_match", "POST", 403, photo_match(client, sample, sample, sample_faces="all")),
        ("/cached_match", "POST", 403, cached_match(client, b"[1]", sample, threshold="1")),
        ("/photo_match", "POST", 413, photo_match(small, sample, b"\xff" * 100_000)),
        (
            "/photo_match",
            "POST",
            413,
            client.post("/photo_match", data={**_many_parts(1001), **files(sample=sample)}),
        ),
        ("/photo_match", "POST", 413, photo_match(client, sample, png_declaring(10**5, 10**5))),
        ("/photo_match", "POST", 415, photo_match(client, sample, b"text")),
        ("/photo_match", "POST", 422, photo_match(client, sample, blank)),
        ("/embeddings", "POST", 400, client.post("/embeddings", data={"format": "pkl"})),
        ("/embeddings", "POST", 422, client.post("/embeddings", data=files(photo=blank))),
        ("/faces", "POST", 401, keyed.post("/faces", data=files(photo=sample))),
        ("/faces", "POST", 400, client.post("/faces", data={**files(photo=sample), "crops": "1"})),
        (
            "/faces",
            "POST",
            413,
            client.post("/faces", data=files(photo=png_declaring(10**5, 10**5))),
        ),
        ("/faces", "POST", 415, client.post("/faces", data=files(photo=b"text"))),
        ("/cached_match", "POST", 400, cached_match(client, b"[1, 2]", sample)),
        (
            "/cached_match",
            "POST",
            400,
            cached_match(signing_client, dumps(signed["embedding"]), sample),
        ),
        (
            "/cached_match",
            "POST",
            403,
            cached_match(
                signing_client, dumps({**signed, "embedding": signed["embedding"][::-1]}), sample
            ),
        ),
        (
            "/cached_match",
            "POST",
            422,
            cached_match(
                signing_client,
                dumps(
                    {**signed, "model": "vggface2", "signature": _signed_for_other_model(signed)}
                ),
                sample,
            ),
        ),
    ]
    for path, method, status, response in cases:
        assert response.status_code == status, (path, status, response.get_data(as_text=True))
        assert_conforms(document_schema, path, method, response)


def _many_parts(count: int) -> dict:
    return {f"field{i}": "x" for i in range(count)}


def _blank_jpeg() -> bytes:
    from PIL import Image
    from support import image_bytes

    return image_bytes(Image.new("RGB", (250, 250), (200, 180, 160)))


def _signed_for_other_model(body: dict) -> str:
    import numpy as np

    from facematch.api.security import ReferenceSigner

    return ReferenceSigner([SIGN_NEW]).sign(np.asarray(body["embedding"], np.float32), "vggface2")


def test_a_response_that_breaks_the_document_is_caught(client, document_schema):
    """The conformance check itself can fail: a body missing a required key is refused."""
    from schemathesis.core.failures import FailureGroup

    response = client.get("/ping")
    response.set_data(b'{"state": "ok"}')
    with pytest.raises(FailureGroup):
        document_schema["/ping"]["GET"].validate_response(response)


# --- schemathesis: generated requests against the app ---
# (A plain loop over the operations: schemathesis' pytest plugin does not run under pytest 9.2.)

OPERATIONS = [(path, method.upper()) for path, item in DOCUMENT["paths"].items() for method in item]
_FUZZ_SETTINGS = hypothesis_settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


def operation_for(app, path: str, method: str):
    """The document's operation, bound to ``app`` (requests go to it in-process)."""
    schema = schemathesis.openapi.from_dict(DOCUMENT)
    schema.app = app
    return schema[path][method]


@pytest.mark.parametrize("path,method", OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_generated_requests_get_documented_answers_and_no_5xx(app, path, method):
    operation = operation_for(app, path, method)
    statuses: dict[int, int] = {}

    @_FUZZ_SETTINGS
    @given(case=operation.as_strategy())
    def run(case):
        response = case.call_and_validate(checks=CHECKS)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    run()
    assert statuses and all(status < 500 for status in statuses)


def test_generated_requests_do_catch_a_server_error(settings, failing_engine):
    """The fuzzing can fail: an engine that breaks on every photo is found within the bound."""
    from schemathesis.core.failures import FailureGroup

    operation = operation_for(create_app(settings, engine=failing_engine), "/embeddings", "POST")

    @_FUZZ_SETTINGS
    @given(case=operation.as_strategy())
    def run(case):
        case.call_and_validate(checks=CHECKS)

    with pytest.raises(FailureGroup, match="Server error"):
        run()


@pytest.mark.parametrize("path,method", OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_generated_requests_without_a_key_are_all_401_when_keys_are_on(
    settings, engine, path, method
):
    app = create_app(settings.replace(api_keys=KEY_A), engine=engine)
    operation = operation_for(app, path, method)
    expected = 200 if path in OPEN_PATHS else 401

    @settings_for_keyed
    @given(case=operation.as_strategy())
    def run(case):
        response = case.call(headers={"Authorization": "", "X-API-Key": ""})
        assert response.status_code == expected, response.text
        case.validate_response(response, checks=CHECKS[:5])

    run()


settings_for_keyed = hypothesis_settings(_FUZZ_SETTINGS, max_examples=20)
#: The paths answered without a key: liveness and the web page (which holds no data).
OPEN_PATHS = ("/ping", "/")
