"""JSON a client sends is parsed within bounds (facematch/bounded_json.py): its size checked
first, its depth by a scan that never recurses and is not fooled by brackets or quotes inside
strings; then, on every route that reads JSON, a deep or huge document is a 400 naming the
limit, never a 500."""

from __future__ import annotations

import io
import json
import random
import time

import pytest

from facematch import bounded_json
from facematch.api.codec import MAX_REFERENCE_BYTES
from facematch.api.gallery_routes import MAX_SUBJECT_BODY_BYTES
from facematch.api.security import reference_claims
from facematch.bounded_json import MAX_DEPTH, MAX_NUMBER_CHARS
from facematch.errors import InvalidParameter
from tests.support import assert_error


def loads(data, max_bytes: int = 10**6, **limits):
    return bounded_json.loads(data, what="the body", max_bytes=max_bytes, **limits)


def nested(depth: int, inner: str = "0") -> str:
    return "[" * depth + inner + "]" * depth


def depth_of(value) -> int:
    """The nesting depth of a parsed value, by recursion (the reference for the scan)."""
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


# --- the module -----------------------------------------------------------------------------


def test_the_deepest_accepted_document_parses_and_one_level_more_is_refused_naming_the_limit():
    assert loads(nested(MAX_DEPTH)) == json.loads(nested(MAX_DEPTH))
    with pytest.raises(InvalidParameter, match=f"the body nests .* more than {MAX_DEPTH} levels"):
        loads(nested(MAX_DEPTH + 1))
    assert loads(nested(3), max_depth=3) and loads("{}", max_depth=1) == {}
    with pytest.raises(InvalidParameter, match="more than 2 levels"):
        loads('{"a": {"b": []}}', max_depth=2)


def test_100000_nested_arrays_are_refused_without_recursing():
    with pytest.raises(InvalidParameter, match="levels"):
        loads(nested(100_000))
    with pytest.raises(InvalidParameter, match="levels"):
        loads("[" * 100_000)  # never closed


def test_the_size_is_checked_first_in_utf8_bytes():
    with pytest.raises(InvalidParameter, match="the body is 200001 bytes; at most 1000 bytes"):
        loads(nested(100_000), max_bytes=1000)
    assert loads('"éé"', max_bytes=6) == "éé"  # 6 bytes of UTF-8
    with pytest.raises(InvalidParameter, match="is 6 bytes; at most 5"):
        loads('"éé"', max_bytes=5)  # 4 characters, 6 bytes
    with pytest.raises(InvalidParameter, match="is 6 bytes; at most 5"):
        loads('"éé"'.encode(), max_bytes=5)


@pytest.mark.parametrize(
    "text",
    [
        '["' + "[" * 100 + '"]',  # brackets inside a string do not count
        '{"' + "{" * 100 + '": "' + "]" * 100 + '"}',
        r'["\"' + "[" * 100 + '"]',  # an escaped quote does not end the string
        r'["\\", ' + nested(MAX_DEPTH - 1) + "]",  # an escaped backslash does
        r'["\\\"[[[[", "\u005b"]',
    ],
)
def test_brackets_and_quotes_inside_strings_do_not_count(text):
    assert loads(text) == json.loads(text)


def test_an_escaped_backslash_ends_the_string_so_the_brackets_after_it_count():
    with pytest.raises(InvalidParameter, match="levels"):
        loads(r'["\\", ' + nested(MAX_DEPTH) + "]")


def test_the_scan_agrees_with_the_parsed_depth_on_random_documents():
    chars = ['"', "\\", "[", "]", "{", "}", "a", "é", "\n"]
    rng = random.Random(23)

    def value(depth: int):
        kind = rng.random()
        if depth == 0 or kind < 0.3:
            return "".join(rng.choice(chars) for _ in range(rng.randrange(6)))
        if kind < 0.65:
            return [value(depth - 1) for _ in range(rng.randrange(4))]
        return {value(0): value(depth - 1) for _ in range(rng.randrange(4))}

    for _ in range(500):
        document = value(rng.randrange(1, 8))
        text = json.dumps(document, ensure_ascii=rng.random() < 0.5)
        depth = depth_of(document)
        assert loads(text, max_depth=depth) == document
        if depth:
            with pytest.raises(InvalidParameter, match="levels"):
                loads(text, max_depth=depth - 1)


def test_the_scan_stays_linear_on_unterminated_escaped_quotes():
    text = '"' + '\\"' * 200_000  # every quote escaped: one string to the end
    start = time.perf_counter()
    with pytest.raises(InvalidParameter, match="not valid JSON"):
        loads(text)
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff[]", "not UTF-8"),
        ("[NaN]", "NaN, which JSON does not allow"),
        ("[-Infinity]", "-Infinity"),
        ("[1e400]", "beyond a float's range"),
        ("[" + "9" * (MAX_NUMBER_CHARS + 1) + "]", f"at most {MAX_NUMBER_CHARS} are accepted"),
        ("[1, 2", "not valid JSON"),
        ("", "not valid JSON"),
    ],
)
def test_anything_but_strict_json_is_refused_with_a_reason(data, message):
    with pytest.raises(InvalidParameter, match=message):
        loads(data)


def test_a_deep_or_huge_reference_states_no_claims():
    deep = b'{"signature": "s", "x": ' + nested(1000).encode() + b"}"
    assert reference_claims(deep) == (None, None)
    huge = b'{"signature": "' + b"s" * MAX_REFERENCE_BYTES + b'"}'
    assert reference_claims(huge) == (None, None)
    assert reference_claims(b' {"signature": "s", "model": "m"}') == ("s", "m")


# --- every JSON a client sends, through the app ---------------------------------------------

DEEP = nested(1000)  # 2 KB: under every size limit, over the depth limit
NESTED_100000 = nested(100_000)  # the body: 200 KB


def put_subject(client, body: str):
    return client.put(
        "/galleries/bounded-json/subjects/s", data=body, content_type="application/json"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (DEEP, f"more than {MAX_DEPTH} levels"),
        (NESTED_100000, f"at most {MAX_SUBJECT_BODY_BYTES} bytes"),
        ('{"name": "' + "x" * MAX_SUBJECT_BODY_BYTES + '"}', f"at most {MAX_SUBJECT_BODY_BYTES}"),
        ('{"metadata": ' + DEEP + "}", f"more than {MAX_DEPTH} levels"),
        ('{"metadata": ' + nested(MAX_DEPTH) + "}", f"more than {MAX_DEPTH} levels"),
        ('{"metadata": {"a": "' + "x" * MAX_SUBJECT_BODY_BYTES + '"}}', "bytes are accepted"),
        ('{"metadata": {"a": "' + "x" * 5000 + '"}}', "exceeds 4096 bytes"),
        ('{"metadata": [NaN]}', "NaN"),
    ],
    ids=[
        "deep-body",
        "100000-nested-arrays",
        "huge-body",
        "deep-metadata",
        "metadata-one-level-too-deep",
        "huge-metadata",
        "metadata-over-4096-bytes",
        "nan-metadata",
    ],
)
def test_a_deep_or_huge_subject_body_is_400_naming_the_limit(client, body, message):
    response = put_subject(client, body)
    assert_error(response, 400, "invalid_parameter")
    assert message in response.json["error"]["message"]


def test_the_deepest_metadata_a_subject_body_holds_is_stored(client):
    metadata = nested(MAX_DEPTH - 1)
    response = put_subject(client, '{"metadata": ' + metadata + "}")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["metadata"] == json.loads(metadata)


REFERENCES = {
    "deep": (DEEP.encode(), f"more than {MAX_DEPTH} levels"),
    "deep-object": (b'{"embedding": ' + DEEP.encode() + b"}", f"more than {MAX_DEPTH}"),
    "100000-nested-arrays": (NESTED_100000.encode(), f"at most {MAX_REFERENCE_BYTES // 1024} KiB"),
    "huge": (b"[" + b" " * MAX_REFERENCE_BYTES + b"0]", f"{MAX_REFERENCE_BYTES // 1024} KiB"),
    "long-number": (b"[" + b"1" * 5000 + b"]", f"at most {MAX_NUMBER_CHARS} are accepted"),
}


def reference_field(data: bytes, as_file: bool):
    return (io.BytesIO(data), "reference.json") if as_file else data.decode()


@pytest.mark.parametrize("as_file", [True, False], ids=["file", "form-field"])
@pytest.mark.parametrize("name", REFERENCES)
def test_a_deep_or_huge_json_reference_to_cached_match_is_400_naming_the_limit(
    client, name, as_file
):
    data, message = REFERENCES[name]
    response = client.post("/cached_match", data={"reference": reference_field(data, as_file)})
    assert_error(response, 400, "invalid_embedding")
    assert message in response.json["error"]["message"]


@pytest.mark.parametrize("as_file", [True, False], ids=["file", "form-field"])
@pytest.mark.parametrize("name", REFERENCES)
def test_a_deep_or_huge_json_embedding_to_enrol_is_400_naming_the_limit(client, name, as_file):
    data, message = REFERENCES[name]
    response = client.post(
        "/galleries/bounded-json/subjects/s/faces",
        data={"embedding": reference_field(data, as_file)},
    )
    assert_error(response, 400, "invalid_embedding")
    assert message in response.json["error"]["message"]
