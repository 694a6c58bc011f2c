"""The memory one request may take is bounded by what it decodes (issue 10, section 3), measured
on a real Gunicorn worker: its peak RSS (VmHWM, reset through /proc/<pid>/clear_refs before each
request) grows by at most ``BUDGET_BYTES_PER_PIXEL x FACEMATCH_MAX_PIXELS`` for each image the
request decodes plus ``ENGINE_MIB`` of detection and embedding, whatever the upload (at most the
10 MB cap): bombs of every kind found, and the largest legitimate photos at the pixel limit.
And the memory comes back (issue 24): a server at the defaults, after a battery of such requests,
holds less than ``TOTAL_PSS_MIB`` in all (master and workers) 5 s after its last answer."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from facematch.config import Settings
from facematch.engine.decoding import BUDGET_BYTES_PER_PIXEL
from tests import crafted_files
from tests.support import SAME, image_bytes

MAX_PIXELS = Settings().max_pixels
#: Detection and embedding of a request at the detector's 640 px side, on top of the decoded
#: images (measured: 150 MiB on a fresh worker for a 40 MP photo, including what it keeps).
ENGINE_MIB = 200
#: Total PSS of a default server (master and two workers) 5 s after its last answer.
TOTAL_PSS_MIB = 400
#: 40 MP at 4:3, a phone's largest photo.
WIDTH, HEIGHT = 7300, 5470


def bound_mib(images: int) -> float:
    return images * BUDGET_BYTES_PER_PIXEL * MAX_PIXELS / 2**20 + ENGINE_MIB


@pytest.fixture(scope="module")
def server(module_gunicorn):
    """One worker with one thread, so its peak is one request's."""
    return module_gunicorn(FACEMATCH_THREADS="1", FACEMATCH_MAX_UPLOAD_MB="10")


def _kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


def peak_growth_mib(server, path: str, files: dict) -> tuple[int, float]:
    """Send one request; its status and how far the worker's peak RSS rose above its RSS."""
    (pid,) = server.workers()
    with open(f"/proc/{pid}/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current RSS
    before = _kib(pid, "VmRSS")
    response = requests.post(server.url + path, files=files, timeout=300)
    return response.status_code, (_kib(pid, "VmHWM") - before) / 1024


@pytest.fixture(scope="module")
def largest_photo(face_bytes) -> bytes:
    """A 40 MP JPEG of a face, stored sideways with EXIF orientation 6 as phones do (so it is
    rotated too: the rotation is a copy)."""
    face = Image.open(io.BytesIO(face_bytes(SAME[1]))).convert("RGB")
    upright = face.resize((HEIGHT, WIDTH), Image.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = 6
    return image_bytes(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif)


def _bombs(face_bytes) -> dict[str, tuple[str, dict, int]]:
    """name -> (path, files, expected status) of small uploads that grew a worker by ~1 GB."""
    face = Image.open(io.BytesIO(face_bytes(SAME[1]))).convert("RGB")
    grey = crafted_files.png(WIDTH, HEIGHT, 8, 0, b"\0" * (WIDTH + 1) * HEIGHT)
    sample = ("s.jpg", face_bytes(SAME[1]))
    return {
        "ico holding a 40 MP png": ("/embeddings", {"photo": ("i", _ico(grey))}, 415),
        "icns holding a 2^31-1 squared png": (
            "/embeddings",
            {"photo": ("i", crafted_files.icns_with_png())},
            415,
        ),
        "16-bit grey png of 40 MP": (
            "/embeddings",
            {"photo": ("p", crafted_files.grey16_png(WIDTH, HEIGHT))},
            422,
        ),
        "jpeg of 5,000 scans": (
            "/embeddings",
            {"photo": ("j", crafted_files.jpeg_with_scans(face, 5000))},
            415,
        ),
        "webp declaring 16383x16383": (
            "/embeddings",
            {"photo": ("w", crafted_files.webp_declaring())},
            413,
        ),
        "pt whose deflated storage is 1 GiB": (
            "/cached_match",
            {"reference": ("r", crafted_files.pt_with_deflated_storage(2**28)), "sample": sample},
            400,
        ),
        "pt whose deflated storage is 32 MiB (under the size cap)": (
            "/cached_match",
            {"reference": ("r", crafted_files.pt_with_deflated_storage(2**23)), "sample": sample},
            400,
        ),
        "npy declaring 2^40 values": (
            "/cached_match",
            {"reference": ("r", crafted_files.npy_declaring((2**40,))), "sample": sample},
            400,
        ),
    }


def _ico(png: bytes) -> bytes:
    head = crafted_files.ico_with_png(1, 1)[:22]
    return head[:14] + len(png).to_bytes(4, "little") + head[18:] + png


def test_bombs_of_every_kind_grow_a_worker_within_the_one_image_bound(server, face_bytes):
    seen = {}
    for name, (path, files, status) in _bombs(face_bytes).items():
        got, growth = peak_growth_mib(server, path, files)
        seen[name] = (got, round(growth))
        assert got == status, (name, got)
    print("peak RSS growth (MiB):", seen)
    assert all(growth <= bound_mib(1) for _, growth in seen.values()), (bound_mib(1), seen)


def test_largest_legitimate_photos_at_the_pixel_limit_stay_within_the_bound(server, largest_photo):
    assert len(largest_photo) < 10 * 2**20
    status, one = peak_growth_mib(server, "/embeddings", {"photo": ("p.jpg", largest_photo)})
    assert status == 200
    assert one <= bound_mib(1), one
    two_photos = {"reference": ("r.jpg", largest_photo), "sample": ("s.jpg", largest_photo)}
    status, two = peak_growth_mib(server, "/photo_match", two_photos)
    assert status == 200
    assert two <= bound_mib(2), two
    print(f"peak RSS growth: one 40 MP photo {one:.0f} MiB, two {two:.0f} MiB")


def test_worker_does_not_keep_growing_after_bombs(server, largest_photo):
    """Ten requests of two 40 MP photos in a row: the worker's RSS after the last is within
    ENGINE_MIB of its RSS after the first (nothing accumulates, so no recycling is needed)."""
    (pid,) = server.workers()
    two_photos = {"reference": ("r.jpg", largest_photo), "sample": ("s.jpg", largest_photo)}
    after = []
    for _ in range(10):
        response = requests.post(server.url + "/photo_match", files=two_photos, timeout=300)
        assert response.status_code == 200
        after.append(_kib(pid, "VmRSS") / 1024)
    print("RSS after each (MiB):", [round(v) for v in after])
    assert max(after) - after[0] <= ENGINE_MIB / 2, after
    assert server.workers() == {pid}


@pytest.fixture(scope="module")
def default_server(module_gunicorn):
    """A server at the serving defaults: two workers of two threads."""
    return module_gunicorn(FACEMATCH_WORKERS="2", FACEMATCH_THREADS="2")


def total_pss_mib(server) -> float:
    """The PSS of the master and its workers, summed (``/proc/<pid>/smaps_rollup``)."""
    total = 0
    for pid in (server.pid, *server.workers()):
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            total += next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    return total / 1024


def test_server_gives_back_the_memory_of_requests_at_the_limits_within_5_s(
    default_server, largest_photo, face_bytes
):
    """Four clients at once: 40 MP 16-bit PNGs (refused, 422), pairs of 40 MP JPEGs (200) and
    refused .pt references (400: they must not load PyTorch, which would stay)."""
    refused = ("/embeddings", {"photo": ("p.png", crafted_files.grey16_png(WIDTH, HEIGHT))}, 422)
    two_photos = {"reference": ("r.jpg", largest_photo), "sample": ("s.jpg", largest_photo)}
    bad_pt = {
        "reference": ("r.pt", crafted_files.pt_with_deflated_storage(2**23)),
        "sample": ("s.jpg", face_bytes(SAME[1])),
    }
    battery = [refused] * 4 + [("/photo_match", two_photos, 200), refused] * 2
    battery += [("/cached_match", bad_pt, 400)] * 2

    def send(request) -> int:
        path, files, _ = request
        return requests.post(default_server.url + path, files=files, timeout=300).status_code

    with ThreadPoolExecutor(4) as clients:
        statuses = list(clients.map(send, battery))
    answered = time.monotonic()
    assert statuses == [status for _, _, status in battery]
    time.sleep(max(0.0, 5 - (time.monotonic() - answered)))
    total = total_pss_mib(default_server)
    print(f"total PSS 5 s after the last answer: {total:.0f} MiB")
    assert "heap trimmed" in default_server.log()
    assert total < TOTAL_PSS_MIB, total


def test_lfw_requests_never_trim_the_heap(default_server, face_bytes):
    """Small requests pay nothing: LFW pairs, then an idle worker, log no trim."""
    pair = {"reference": ("r.jpg", face_bytes(SAME[0])), "sample": ("s.jpg", face_bytes(SAME[1]))}
    trims = default_server.log().count("heap trimmed")
    for _ in range(10):
        response = requests.post(default_server.url + "/photo_match", files=pair, timeout=60)
        assert response.status_code == 200
    time.sleep(2)
    trimmed = [line for line in default_server.log().splitlines() if "heap trimmed" in line]
    assert len(trimmed) == trims, trimmed[trims:]
