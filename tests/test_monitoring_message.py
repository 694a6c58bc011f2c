"""The v1 metrics message: built from request records, checked by the schema file in the repo,
and turned into the point the bridge writes."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from facematch.observability import message as m
from facematch.observability.record import FaceSummary, Latency, RequestRecord


def match_record() -> RequestRecord:
    return RequestRecord(
        endpoint="/photo_match",
        started=1_700_000_000.123456,
        status=200,
        match=True,
        distance=0.31,
        threshold=0.5,
        metric="cosine",
        model="casia-webface",
        faces=[
            FaceSummary("reference", 1, 0.9991, [1.0, 2.0, 3.0, 4.0], 250, 250),
            FaceSummary("sample", 2, 0.97, None, 640, 480),
        ],
        latency=Latency(decode=1.5, detection=40.25, embedding=20.0, scoring=0.1, total=70.0),
    )


def error_record() -> RequestRecord:
    return RequestRecord(
        endpoint="/cached_match",
        status=422,
        error_code="no_face",
        model="casia-webface",
        faces=[FaceSummary("sample", 0, None, None, 100, 80)],
        latency=Latency(decode=0.5, detection=12.0, total=15.0),
    )


def embeddings_record() -> RequestRecord:
    return RequestRecord(
        endpoint="/embeddings",
        model="vggface2",
        faces=[FaceSummary("photo", 1, 0.99, None, 250, 250)],
    )


def test_schema_file_is_a_valid_json_schema_and_pins_version_1():
    schema = json.loads(m.SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema_version"]["const"] == 1
    assert m.SCHEMA_VERSION == 1


@pytest.mark.parametrize(
    "record",
    [match_record(), error_record(), embeddings_record()],
    ids=["match", "error", "embeddings"],
)
def test_messages_built_from_records_validate_against_the_schema(record):
    message = m.build_message(record, node="node-a", pid=4242, host="host-a")
    m.validate(message)
    assert m.decode(m.encode(message)) == message


def test_message_carries_node_pid_and_every_record_value():
    message = m.build_message(match_record(), node="node-a", pid=4242, host="host-a")
    assert message["timestamp"] == "2023-11-14T22:13:20.123456Z"
    assert (message["node"], message["host"], message["pid"]) == ("node-a", "host-a", 4242)
    assert (message["endpoint"], message["status"], message["error_code"]) == (
        "/photo_match",
        200,
        None,
    )
    assert (
        message["match"],
        message["distance"],
        message["threshold"],
        message["metric"],
        message["model"],
    ) == (True, 0.31, 0.5, "cosine", "casia-webface")
    assert message["faces"] == [
        {
            "role": "reference",
            "count": 1,
            "probability": 0.9991,
            "image_width": 250,
            "image_height": 250,
        },
        {
            "role": "sample",
            "count": 2,
            "probability": 0.97,
            "image_width": 640,
            "image_height": 480,
        },
    ]
    assert message["latency_ms"] == {
        "decode": 1.5,
        "detection": 40.25,
        "embedding": 20.0,
        "scoring": 0.1,
        "total": 70.0,
    }
    assert "box" not in json.dumps(message)


def test_each_message_gets_a_fresh_id():
    ids = {m.build_message(match_record(), node="n")["id"] for _ in range(50)}
    assert len(ids) == 50


def _broken(change) -> dict:
    message = copy.deepcopy(m.build_message(match_record(), node="n", pid=1, host="h"))
    change(message)
    return message


@pytest.mark.parametrize(
    "message",
    [
        _broken(lambda d: d.update(schema_version=2)),
        _broken(lambda d: d.pop("latency_ms")),
        _broken(lambda d: d.update(status="200")),
        _broken(lambda d: d.update(timestamp="yesterday")),
        _broken(lambda d: d["faces"][0].update(probability=1.5)),
        _broken(lambda d: d["faces"][0].update(role="selfie")),
        _broken(lambda d: d.update(embedding=[0.1, 0.2])),
        _broken(lambda d: d["latency_ms"].update(total=-1)),
        [1, 2, 3],
    ],
    ids=[
        "version-2",
        "no-latency",
        "status-as-text",
        "bad-timestamp",
        "probability-over-1",
        "unknown-role",
        "extra-property",
        "negative-latency",
        "not-an-object",
    ],
)
def test_schema_rejects_messages_that_break_it(message):
    with pytest.raises(m.InvalidMessage):
        m.validate(message)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"\xff\xfe",
        b"{}",
        b"",
        b"[" * 100_000 + b"]" * 100_000,  # the parser would recurse
        b'{"node": "' + b"x" * m.MAX_PAYLOAD_BYTES + b'"}',
    ],
    ids=["not-json", "not-utf8", "empty-object", "empty", "deep", "huge"],
)
def test_decode_rejects_payloads_that_are_not_v1_messages(payload):
    with pytest.raises(m.InvalidMessage):
        m.decode(payload)


def test_point_has_the_documented_tags_and_numeric_fields():
    point = m.to_point(m.build_message(match_record(), node="node-a", pid=4242, host="h"))
    assert point.time_ns == 1_700_000_000_123_456_000
    assert point.tags == {
        "node": "node-a",
        "endpoint": "/photo_match",
        "model": "casia-webface",
        "status": "200",
        "match": "true",
        "error_code": "none",
    }
    assert point.fields == {
        "pid": 4242,
        "error": 0,
        "matched": 1,
        "distance": 0.31,
        "threshold": 0.5,
        "latency_decode_ms": 1.5,
        "latency_detection_ms": 40.25,
        "latency_embedding_ms": 20.0,
        "latency_scoring_ms": 0.1,
        "latency_total_ms": 70.0,
        "faces_reference": 1,
        "probability_reference": 0.9991,
        "image_width_reference": 250,
        "image_height_reference": 250,
        "faces_sample": 2,
        "probability_sample": 0.97,
        "image_width_sample": 640,
        "image_height_sample": 480,
    }
    assert set(point.fields) <= m.field_names()


def test_error_point_is_tagged_with_its_code_and_has_no_decision_fields():
    point = m.to_point(m.build_message(error_record(), node="n", pid=7, host="h"))
    assert point.tags["status"] == "422"
    assert point.tags["error_code"] == "no_face"
    assert point.tags["match"] == "none"
    assert point.fields["error"] == 1
    assert point.fields["faces_sample"] == 0
    assert not {"matched", "distance", "threshold", "probability_sample"} & set(point.fields)
