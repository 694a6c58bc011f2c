"""The gallery speed command end to end at tiny sizes, on a real SQLite and a real PostgreSQL."""

from __future__ import annotations

import json

import numpy as np

from benchmarking_utils import gallery_speed


def fake_lfw(path, people: int = 40, images: int = 3) -> None:
    """An embeddings file shaped like the LFW cache: clusters of images per person."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((people, 512)).astype(np.float32)
    names, vectors = [], []
    for p in range(people):
        for i in range(images):
            names.append(f"Person_{p:02d}/Person_{p:02d}_{i + 1:04d}.jpg")
            vectors.append(centres[p] + 0.5 * rng.standard_normal(512).astype(np.float32))
    np.savez(path, names=np.array(names), vectors=np.array(vectors), without_face=np.array([]))


def test_the_command_measures_both_backends_and_reuses_its_galleries(
    postgres_server, tmp_path, capsys
):
    embeddings = tmp_path / "lfw.npz"
    fake_lfw(embeddings)
    out = tmp_path / "speed.json"
    argv = [
        "--sizes", "300,1500", "--queries", "20", "--ef-search", "40,200",
        "--enrol-faces", "20", "--batch", "8", "--pg-url", postgres_server.url,
        "--workdir", str(tmp_path / "work"), "--lfw-embeddings", str(embeddings),
        "--out", str(out), "--reuse",
    ]  # fmt: skip
    assert gallery_speed.main(argv) == 0
    first = capsys.readouterr().out

    result = json.loads(out.read_text())
    assert {"date", "command", "commit", "machine", "load_average_start"} <= set(result)
    assert result["data"]["lfw_enrolled"] == 80  # 40 people, one image each held out
    entries = {(e["backend"], e["faces"]): e for e in result["results"]}
    assert set(entries) == {(b, n) for b in ("sqlite", "postgres") for n in (300, 1500)}
    for n in (300, 1500):
        sqlite = entries["sqlite", n]
        assert sqlite["recall_at_1"] == 1.0  # exact by design
        assert sqlite["search"]["n"] == 20 and sqlite["search"]["p50_ms"] > 0
        assert sqlite["memory_per_worker"]["matrix_mib"] > 0
        assert "load_average" in sqlite["search"] and "loaded" in sqlite["search"]
        postgres = entries["postgres", n]
        assert postgres["index"]["build_s"] >= 0 and postgres["index_mib"] > 0
        assert [s["ef_search"] for s in postgres["searches"]] == [40, 200]
        assert postgres["searches"][-1]["recall_at_1"] >= 0.95
        assert sqlite["search"]["thread_cpu_p50_ms"] > 0
        assert postgres["searches"][0]["server_cpu_mean_ms"] >= 0
    for backend in ("sqlite", "postgres"):
        rates = result["enrolment"][backend]
        assert rates["one_by_one_faces_per_s"] > 0 and rates["batch_faces_per_s"] > 0
    assert "| PostgreSQL | 1,500 | HNSW m 16, ef_construction 64, ef_search 200 |" in first
    assert "loaded in" in first

    assert gallery_speed.main(argv) == 0  # --reuse: the galleries are not written again
    assert "loaded in" not in capsys.readouterr().out
