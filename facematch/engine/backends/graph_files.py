"""Where the networks' ONNX graphs built at set-up live, and whether one is current.

``python -m deployment_utils.graphs build`` writes ``<data dir>/<network>.onnx`` and beside it
``<network>.onnx.json``, which records the size and SHA-256 of the weights file the graph was
exported from. A graph whose weights differ (rebuilt weights, or ``FACEMATCH_WEIGHTS`` naming
another file) is not current, and the engine exports the network from PyTorch at start-up
instead, as it does when no graph was built. The content, not the file's path or time, decides:
two checkouts with their own virtual environments (facenet-pytorch's MTCNN weights are installed
into each) share one data dir, and a copied image keeps its graphs current. A file is hashed once
per process and version (94 MB: about 0.1 s). Where the weights file is not installed (the
default image: torch, facenet-pytorch and the ``.pt`` stay in its builder stage) there is
nothing to compare with: the graph's note is trusted, and that is logged once per graph.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def graph_path(graph_dir: Path, name: str) -> Path:
    """The graph file of network ``name`` in ``graph_dir``."""
    return Path(graph_dir).expanduser() / f"{name}.onnx"


def source_stamp(source: Path | None) -> dict | None:
    """What identifies a weights file's content: its size and SHA-256 (None: no file)."""
    if source is None:
        return None
    stat = Path(source).stat()
    resolved = str(Path(source).resolve())
    return {"size": stat.st_size, "sha256": _sha256(resolved, stat.st_size, stat.st_mtime_ns)}


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """The SHA-256 of the file at ``path`` (its size and mtime key the cache)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_note(graph: Path, source: Path | None, extra: dict) -> None:
    """Record beside ``graph`` the weights file it was exported from (and ``extra``)."""
    note = {"source": source_stamp(source), **extra}
    graph.with_name(graph.name + ".json").write_text(json.dumps(note, indent=2) + "\n")


def current_graph(graph_dir: Path | None, name: str, source: Path | None) -> Path | None:
    """The built graph of ``name`` if it exists and was exported from ``source`` as it is now;
    otherwise None."""
    if graph_dir is None:
        return None
    return current_file(graph_path(graph_dir, name), source)


def current_file(graph: Path, source: Path | None, recipe: dict | None = None) -> Path | None:
    """``graph`` if it exists and its note says it was built from ``source`` as it is now (and,
    when given, with ``recipe``: how it was built); ``source`` None: the weights file is not
    installed here, and the note is trusted."""
    try:
        note = json.loads(graph.with_name(graph.name + ".json").read_text())
    except (OSError, ValueError):
        return None
    if not graph.is_file():
        return None
    if source is None:
        _log_trusted(str(graph))
    elif note.get("source") != source_stamp(source):
        return None
    if recipe is not None and note.get("recipe") != recipe:
        return None
    return graph


@functools.cache
def _log_trusted(graph: str) -> None:
    """Say once per graph that its weights file is not here to check it against."""
    log.info("%s: its weights file is not installed here; trusting the graph's note", graph)
