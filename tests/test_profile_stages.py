"""The profile's stage table (benchmarking_utils.profile_load): each sampled stack goes to the
request stage its frames name, waiting threads are left out, and the shares add up."""

from __future__ import annotations

from benchmarking_utils.profile_load import markdown, read_raw, stage_of, stage_table

PNET_RUN = (
    "_worker (concurrent/futures/thread.py:83);"
    "ComputeSlots.run (facematch/engine/compute_slots.py:64);"
    "search (facematch/engine/mtcnn_search.py:208);"
    "pnet_stage (facematch/engine/mtcnn_search.py:223);"
    "OnnxRuntime.run (facematch/engine/backends/onnx_runtime.py:60)"
)
PNET_LEVEL = "pnet_stage (facematch/engine/mtcnn_search.py:223);area_resample (mtcnn_search.py:53)"
EMBED = (
    "embed (facematch/api/steps.py:206);forward (facematch/engine/embedding.py:120);"
    "run (facematch/engine/backends/onnx_runtime.py:60)"
)
FORM = "photo_match (facematch/api/app.py:249);_load_form_data (werkzeug/formparser.py:300)"
WAIT = "_worker (concurrent/futures/thread.py:81);_queue_SimpleQueue_get (_queuemodule.c.h:177)"


def test_each_stack_goes_to_the_stage_its_frames_name():
    assert stage_of(PNET_RUN) == ("detection: P-Net in ONNX Runtime", "detection")
    assert stage_of(PNET_LEVEL) == ("detection: P-Net pyramid, boxes, NMS", "detection")
    assert stage_of(EMBED) == ("embedding: InceptionResnetV1 in ONNX Runtime", "embedding")
    assert stage_of(FORM) == ("multipart form parsing", "")
    assert stage_of("main (somewhere.py:1)")[0].startswith("other")


def test_the_table_leaves_waits_out_and_splits_the_cpu_by_share(tmp_path):
    raw = tmp_path / "worker.txt"
    raw.write_text(f"{PNET_RUN} 30\n{EMBED} 60\n{FORM} 10\n{WAIT} 500\n")
    counts = read_raw(raw)
    assert sum(counts.values()) == 600
    rows = stage_table(counts, cpu_ms_per_request=100.0)
    assert [(r["stage"], r["cpu_ms_per_request"]) for r in rows] == [
        ("embedding: InceptionResnetV1 in ONNX Runtime", 60.0),
        ("detection: P-Net in ONNX Runtime", 30.0),
        ("multipart form parsing", 10.0),
    ]
    assert "| multipart form parsing | 10.0% | 10.0 | **not seen** |" in markdown(rows)
