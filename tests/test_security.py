"""API keys and signed references: unit checks of security.py, then the app and a real Gunicorn."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import requests

from facematch.api.app import OPEN_ENDPOINTS, create_app
from facematch.api.security import ReferenceSigner, key_id, reference_claims
from facematch.config import ConfigError
from facematch.errors import BadSignature, Unauthorized, UnsignedReference, WrongModel
from facematch.keys import KeyRing
from facematch.observability import prometheus
from tests.support import (
    KEY_A,
    KEY_B,
    SAME,
    SIGN_NEW,
    SIGN_OLD,
    assert_error,
    cached_match,
    dumps,
    embedding_of,
    every_route,
    files,
)

REPO = Path(__file__).resolve().parents[1]

PROTECTED = [
    ("GET", "/health"),
    ("GET", "/openapi.json"),
    ("POST", "/photo_match"),
    ("POST", "/cached_match"),
    ("POST", "/embeddings"),
    ("GET", "/nowhere"),
]


def unit_vector(seed: int = 0) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=512).astype(np.float32)
    return vector / np.linalg.norm(vector)


# --- KeyRing ---


def test_no_configured_key_lets_every_request_through():
    check = KeyRing.of_keys([])
    assert not check.enabled
    check.check({})


def test_keys_come_from_the_comma_separated_variable_and_the_file(settings, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# production keys\n\n  {KEY_B}  \n")
    check = KeyRing.from_settings(
        settings.replace(api_keys=f" {KEY_A} , ", api_keys_file=str(keys_file))
    )
    assert len(check) == 2
    assert check.is_valid(KEY_A) and check.is_valid(KEY_B)
    assert not check.is_valid(KEY_A[:-1]) and not check.is_valid(KEY_A + "x")
    assert not check.is_valid(None) and not check.is_valid("")


@pytest.mark.parametrize("content", [None, "", "# only a comment\n\n"])
def test_unreadable_or_empty_key_file_stops_the_start(settings, tmp_path, content):
    path = tmp_path / "keys"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as raised:
        KeyRing.from_settings(settings.replace(api_keys_file=str(path)))
    assert "FACEMATCH_API_KEYS_FILE" in str(raised.value)


def test_short_keys_are_refused_without_echoing_them(settings):
    with pytest.raises(ConfigError) as raised:
        KeyRing.from_settings(settings.replace(api_keys=f"{KEY_A},hunter2"))
    assert "#2" in str(raised.value) and "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    "headers,valid",
    [
        ({"Authorization": f"Bearer {KEY_A}"}, True),
        ({"Authorization": f"bearer   {KEY_A} "}, True),
        ({"X-API-Key": KEY_A}, True),
        ({"Authorization": f"Basic {KEY_A}"}, False),
        ({"Authorization": KEY_A}, False),
        ({"Authorization": "Bearer "}, False),
        ({"X-API-Key": KEY_B}, False),
        ({}, False),
    ],
)
def test_key_is_accepted_as_bearer_token_or_x_api_key(headers, valid):
    check = KeyRing.of_keys([KEY_A])
    if valid:
        check.check(headers)
    else:
        with pytest.raises(Unauthorized):
            check.check(headers)


# --- ReferenceSigner ---


def test_signed_reference_verifies_and_json_floats_round_trip():
    signer = ReferenceSigner([SIGN_NEW])
    vector = unit_vector()
    token = signer.sign(vector, "casia-webface")
    assert token.startswith(f"v1.{key_id(SIGN_NEW)}.")
    through_json = np.asarray(json.loads(json.dumps([float(v) for v in vector])), np.float32)
    signer.verify(through_json, "casia-webface", token)


def test_one_changed_value_breaks_the_signature():
    signer = ReferenceSigner([SIGN_NEW])
    vector = unit_vector()
    token = signer.sign(vector, "casia-webface")
    tampered = vector.copy()
    tampered[100] = np.nextafter(tampered[100], np.float32(1))
    with pytest.raises(BadSignature):
        signer.verify(tampered, "casia-webface", token)


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "v1..",
        "v2.00000000." + "A" * 43,
        "v1.00000000." + "A" * 43,
        "v1.{}.{}".format(key_id(SIGN_NEW), "A" * 42),
        "v1.{}.{}".format(key_id(SIGN_NEW), "A" * 43),
    ],
)
def test_malformed_or_forged_tokens_are_bad_signatures(token):
    with pytest.raises(BadSignature):
        ReferenceSigner([SIGN_NEW]).verify(unit_vector(), "casia-webface", token)


def non_canonical_spellings(token: str) -> list[str]:
    """The other three spellings of the token's mac: its last base64url character carries 2
    padding bits that decoding ignores, so each of these decodes to the very same mac."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    assert last % 4 == 0  # what sign() writes: the padding bits are zero
    return [token[:-1] + alphabet[last + bits] for bits in (1, 2, 3)]


def test_only_the_canonical_encoding_of_a_signature_verifies():
    signer = ReferenceSigner([SIGN_NEW])
    vector = unit_vector()
    token = signer.sign(vector, "casia-webface")
    signer.verify(vector, "casia-webface", token)
    for spelling in non_canonical_spellings(token):
        mac = token.rsplit(".", 1)[1]
        assert base64.urlsafe_b64decode(spelling.rsplit(".", 1)[1] + "=") == (
            base64.urlsafe_b64decode(mac + "=")
        )
        with pytest.raises(BadSignature):
            signer.verify(vector, "casia-webface", spelling)


@pytest.mark.parametrize(
    ("before", "after"),
    [("", "\n"), ("", "\r\n"), ("", " "), (" ", ""), (" ", " "), ("\t", "")],
    ids=["newline", "crlf", "trailing-space", "leading-space", "both-spaces", "tab"],
)
def test_a_signature_with_spaces_or_a_line_end_around_it_does_not_verify(before, after):
    signer = ReferenceSigner([SIGN_NEW])
    vector = unit_vector()
    token = signer.sign(vector, "casia-webface")
    with pytest.raises(BadSignature, match="spaces or line breaks around it"):
        signer.verify(vector, "casia-webface", before + token + after)


@pytest.mark.parametrize("token", [None, "", "   "])
def test_missing_signature_is_an_unsigned_reference(token):
    with pytest.raises(UnsignedReference):
        ReferenceSigner([SIGN_NEW]).verify(unit_vector(), "casia-webface", token)


def test_rotation_verifies_old_signatures_until_the_old_key_is_removed():
    vector = unit_vector()
    old_token = ReferenceSigner([SIGN_OLD]).sign(vector, "casia-webface")
    rotating = ReferenceSigner([SIGN_NEW, SIGN_OLD])
    rotating.verify(vector, "casia-webface", old_token)
    assert rotating.sign(vector, "casia-webface").split(".")[1] == key_id(SIGN_NEW)
    with pytest.raises(BadSignature):
        ReferenceSigner([SIGN_NEW]).verify(vector, "casia-webface", old_token)


def test_authentic_reference_from_another_model_is_wrong_model_and_a_relabel_is_bad():
    signer = ReferenceSigner([SIGN_NEW])
    vector = unit_vector()
    other = signer.sign(vector, "vggface2")
    with pytest.raises(WrongModel):
        signer.verify(vector, "casia-webface", other, claimed_model="vggface2")
    with pytest.raises(BadSignature):  # the claim was edited to pass as this model
        signer.verify(vector, "casia-webface", other, claimed_model="casia-webface")
    with pytest.raises(BadSignature):  # no claim: checked as the serving model
        signer.verify(vector, "casia-webface", other)


def test_short_signing_key_stops_the_start():
    with pytest.raises(ConfigError):
        ReferenceSigner(["short"])


def test_claims_are_read_only_from_a_json_object():
    body = json.dumps({"embedding": [0.1] * 512, "model": "m", "signature": "s"}).encode()
    assert reference_claims(body) == ("s", "m")
    assert reference_claims(b"[0.1, 0.2]") == (None, None)
    assert reference_claims(b"\x93NUMPY...") == (None, None)
    assert reference_claims(b'{"signature": 5, "model": ["m"]}') == (None, None)
    assert reference_claims(b"{broken") == (None, None)


# --- the app with API keys ---


@pytest.fixture
def keyed(settings, engine, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(KEY_B + "\n")
    app = create_app(settings.replace(api_keys=KEY_A, api_keys_file=str(keys_file)), engine=engine)
    return app.test_client()


def test_ping_needs_no_key(keyed):
    assert keyed.get("/ping").json == {"status": "ok"}


@pytest.mark.parametrize("method,path", PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key-0123456789"},
        {"X-API-Key": KEY_A[:-1]},
        {"Authorization": f"Token {KEY_A}"},
    ],
)
def test_every_other_route_is_401_without_a_valid_key(keyed, method, path, headers):
    response = keyed.open(path, method=method, headers=headers)
    assert_error(response, 401, "unauthorized")


def documented_open_routes() -> dict[str, str]:
    """endpoint -> what docs/security.md's table of routes without an API key says of it."""
    text = (REPO / "docs" / "security.md").read_text()
    table = text.split("#### Routes without an API key", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `[A-Z]+ [^`]+` \| `([\w.]+)` \| ([^|]+) \|", table, re.M)
    return {endpoint: said.strip() for endpoint, said in rows}


def test_the_documented_open_routes_are_the_ones_answered_without_a_key(keyed):
    documented = documented_open_routes()
    assert set(documented) == set(OPEN_ENDPOINTS)
    open_routes = {endpoint for endpoint, said in documented.items() if said == "open"}
    assert open_routes == {"api.ping", "web.index", "static"}
    assert documented[prometheus.ENDPOINT] == "its own check"
    for method, path, endpoint in every_route(keyed.application):
        status = keyed.open(path, method=method).status_code
        if endpoint in open_routes:
            assert status == (204 if method == "OPTIONS" else 200), (method, path)
        elif endpoint in documented and method == "OPTIONS":
            assert status == 204, path  # /metrics: OPTIONS skips the key check, as documented
        else:  # /metrics too: with keys on and no token of its own, it needs an API key
            assert status == 401, (method, path)


def test_401_is_the_same_whatever_part_was_wrong(keyed):
    bodies = {
        keyed.get("/health", headers=h).get_data()
        for h in (
            {},
            {"X-API-Key": "x" * 20},
            {"Authorization": "Bearer " + KEY_A + "x"},
            {"Authorization": "Basic " + KEY_A},
        )
    }
    assert len(bodies) == 1


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY_A}"}, {"X-API-Key": KEY_B}])
def test_configured_keys_from_variable_and_file_open_the_api(keyed, face_bytes, headers):
    assert keyed.get("/health", headers=headers).status_code == 200
    response = keyed.post("/embeddings", headers=headers, data=files(photo=face_bytes(SAME[0])))
    assert response.status_code == 200
    assert len(response.json["embedding"]) == 512


# --- the app with signing ---


def signing_client(settings, engine, *keys: str):
    return create_app(settings.replace(signing_keys=",".join(keys)), engine=engine).test_client()


@pytest.fixture
def signing(settings, engine):
    return signing_client(settings, engine, SIGN_NEW)


def test_without_signing_keys_embeddings_are_unsigned(client, face_bytes):
    body = embedding_of(client, face_bytes(SAME[0]), "json").json
    assert "signature" not in body
    npy = embedding_of(client, face_bytes(SAME[0]), "npy")
    assert "X-Facematch-Signature" not in npy.headers


def test_signed_json_from_embeddings_is_accepted_unchanged(signing, face_bytes):
    stored = embedding_of(signing, face_bytes(SAME[0]), "json")
    assert stored.json["signature"].split(".")[1] == key_id(SIGN_NEW)
    response = cached_match(signing, stored.get_data(), face_bytes(SAME[1]))
    assert response.status_code == 200, response.json
    assert response.json["match"] is True
    as_text = cached_match(
        signing, stored.get_data(as_text=True), face_bytes(SAME[1]), as_file=False
    )
    assert as_text.status_code == 200


@pytest.mark.parametrize("fmt", ["npy", "pt"])
def test_binary_reference_carries_its_signature_in_a_form_field(signing, face_bytes, fmt):
    stored = embedding_of(signing, face_bytes(SAME[0]), fmt)
    signature = stored.headers["X-Facematch-Signature"]
    response = cached_match(
        signing,
        stored.get_data(),
        face_bytes(SAME[1]),
        signature=signature,
        reference_model=stored.headers["X-Facematch-Model"],
    )
    assert response.status_code == 200, response.json
    assert response.json["match"] is True
    unsigned = cached_match(signing, stored.get_data(), face_bytes(SAME[1]))
    assert_error(unsigned, 400, "unsigned_reference")


def respellings(token: str) -> list[str]:
    """What a careless client might send for ``token``: with a line end or spaces around it,
    or its mac in one of the 3 other base64url spellings."""
    return [token + "\n", token + "\r\n", f" {token} ", *non_canonical_spellings(token)]


def test_only_the_exact_token_verifies_in_a_form_field(signing, face_bytes):
    """A form field arrives as sent, so the server never trims it: a .sig file holds the bare
    token (deployment_utils.embed_references) and its text is sent as is."""
    npy = embedding_of(signing, face_bytes(SAME[0]), "npy")
    for spelling in respellings(npy.headers["X-Facematch-Signature"]):
        response = cached_match(signing, npy.get_data(), face_bytes(SAME[1]), signature=spelling)
        assert_error(response, 403, "bad_signature")


def test_only_the_exact_token_verifies_in_the_json(signing, face_bytes):
    stored = embedding_of(signing, face_bytes(SAME[0]), "json").json
    for spelling in respellings(stored["signature"]):
        reference = dumps({**stored, "signature": spelling})
        assert_error(cached_match(signing, reference, face_bytes(SAME[1])), 403, "bad_signature")


def test_unsigned_references_are_refused(signing, face_bytes):
    vector = embedding_of(signing, face_bytes(SAME[0]), "json").json["embedding"]
    response = cached_match(signing, json.dumps(vector), face_bytes(SAME[1]), as_file=False)
    assert_error(response, 400, "unsigned_reference")
    no_key = dumps({"embedding": vector, "model": "casia-webface"})
    assert_error(cached_match(signing, no_key, face_bytes(SAME[1])), 400, "unsigned_reference")


def test_reference_of_another_face_under_a_real_signature_is_403(signing, face_bytes):
    """The attack signing stops: keep a valid signature, swap in one's own embedding."""
    victim = embedding_of(signing, face_bytes(SAME[0]), "json").json
    attacker = embedding_of(signing, face_bytes("Abel_Pacheco/Abel_Pacheco_0001.jpg"), "json").json
    forged = {**victim, "embedding": attacker["embedding"]}
    response = cached_match(signing, dumps(forged), face_bytes(SAME[1]))
    assert_error(response, 403, "bad_signature")
    nudged = {**victim, "embedding": [v * 1.0001 for v in victim["embedding"]]}
    assert_error(cached_match(signing, dumps(nudged), face_bytes(SAME[1])), 403, "bad_signature")


def test_signature_is_checked_before_the_sample_is_decoded(signing, face_bytes):
    victim = embedding_of(signing, face_bytes(SAME[0]), "json").json
    forged = {**victim, "signature": victim["signature"][:-2] + "AA"}
    response = cached_match(signing, dumps(forged), b"")
    assert_error(response, 403, "bad_signature")


def test_reference_signed_by_a_key_this_server_does_not_hold_is_403(
    settings, engine, signing, face_bytes
):
    foreign = signing_client(settings, engine, "someone-elses-key-0123456789")
    stored = embedding_of(foreign, face_bytes(SAME[0]), "json").get_data()
    assert_error(cached_match(signing, stored, face_bytes(SAME[1])), 403, "bad_signature")


def test_reference_signed_for_another_model_is_422_wrong_model(signing, face_bytes):
    body = embedding_of(signing, face_bytes(SAME[0]), "json").json
    vector = np.asarray(body["embedding"], np.float32)
    other = {
        **body,
        "model": "vggface2",
        "signature": ReferenceSigner([SIGN_NEW]).sign(vector, "vggface2"),
    }
    response = cached_match(signing, dumps(other), face_bytes(SAME[1]))
    assert_error(response, 422, "wrong_model")
    relabelled = {**body, "model": "vggface2"}
    assert_error(
        cached_match(signing, dumps(relabelled), face_bytes(SAME[1])), 403, "bad_signature"
    )


def test_key_rotation_end_to_end(settings, engine, face_bytes):
    before = signing_client(settings, engine, SIGN_OLD)
    during = signing_client(settings, engine, SIGN_NEW, SIGN_OLD)
    after = signing_client(settings, engine, SIGN_NEW)
    old_reference = embedding_of(before, face_bytes(SAME[0]), "json").get_data()
    assert cached_match(during, old_reference, face_bytes(SAME[1])).status_code == 200
    new_reference = embedding_of(during, face_bytes(SAME[0]), "json")
    assert new_reference.json["signature"].split(".")[1] == key_id(SIGN_NEW)
    assert cached_match(after, new_reference.get_data(), face_bytes(SAME[1])).status_code == 200
    assert_error(cached_match(after, old_reference, face_bytes(SAME[1])), 403, "bad_signature")


# --- nothing sensitive leaves through responses, logs or the disk ---


def test_unexpected_error_is_a_bare_500_without_trace_or_path(
    settings, failing_engine, face_bytes, caplog
):
    app = create_app(settings, engine=failing_engine)
    response = app.test_client().post("/embeddings", data=files(photo=face_bytes(SAME[0])))
    assert response.status_code == 500
    assert response.json == {"error": {"code": "internal_error", "message": "internal error"}}
    assert "secret" in caplog.text  # the operator's log has it; the client does not


def test_large_uploads_are_kept_in_memory(app):
    from flask import request

    big = b"\xff" * (2 * 1024 * 1024)
    with app.test_request_context(
        "/embeddings", method="POST", data={"photo": (io.BytesIO(big), "p.jpg")}
    ):
        stream = request.files["photo"].stream
        assert isinstance(stream, io.BytesIO)
        assert stream.getbuffer().nbytes == len(big)


def test_embeddings_and_images_never_reach_the_log(signing, face_bytes, caplog):
    caplog.set_level(logging.DEBUG)
    photo = face_bytes(SAME[0])
    body = embedding_of(signing, photo, "json").json
    cached_match(signing, dumps(body), face_bytes(SAME[1]))
    cached_match(signing, dumps({**body, "signature": "v1.x"}), face_bytes(SAME[1]))
    values = [repr(v) for v in body["embedding"][:32]] + [
        f"{v:.6f}" for v in body["embedding"][:32]
    ]
    assert not [v for v in values if v in caplog.text]
    assert body["signature"] not in caplog.text
    assert photo[200:232].hex() not in caplog.text and repr(photo[200:232]) not in caplog.text


# --- a real Gunicorn configured through the environment ---


def test_gunicorn_reads_keys_and_signing_keys_from_the_environment(gunicorn, face_bytes):
    server = gunicorn(
        FACEMATCH_API_KEYS=f"{KEY_A},{KEY_B}",
        FACEMATCH_SIGNING_KEYS=f"{SIGN_NEW},{SIGN_OLD}",
        FACEMATCH_LOG_LEVEL="debug",
    )
    url = server.url
    try:
        auth = {"Authorization": f"Bearer {KEY_B}"}
        assert requests.get(url + "/health", timeout=10).status_code == 401
        assert requests.get(url + "/health", headers={"X-API-Key": KEY_A}, timeout=10).ok
        stored = requests.post(
            url + "/embeddings",
            headers=auth,
            timeout=60,
            files={"photo": ("a.jpg", face_bytes(SAME[0]))},
        )
        assert stored.json()["signature"].split(".")[1] == key_id(SIGN_NEW)
        response = requests.post(
            url + "/cached_match",
            headers=auth,
            timeout=60,
            files={
                "reference": ("ref.json", stored.content),
                "sample": ("b.jpg", face_bytes(SAME[1])),
            },
        )
        assert response.status_code == 200 and response.json()["match"] is True
    finally:
        server.stop()
    output = server.log()
    for secret in (KEY_A, KEY_B, SIGN_NEW, SIGN_OLD, stored.json()["signature"]):
        assert secret not in output
    assert repr(stored.json()["embedding"][0]) not in output


def test_gunicorn_refuses_to_start_with_a_missing_key_file(gunicorn, tmp_path):
    server = gunicorn(wait=False, FACEMATCH_API_KEYS_FILE=str(tmp_path / "absent"))
    assert server.wait_exit() != 0
    output = server.log()
    assert "cannot start" in output and "FACEMATCH_API_KEYS_FILE" in output
