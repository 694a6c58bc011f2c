"""The gallery tool: enrol a folder of LFW photos, export a gallery signed, import it into the
other backend (SQLite to PostgreSQL) with the same search results, refuse what it should."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from deployment_utils.gallery_tool import (
    enrol_folder,
    export_gallery,
    import_gallery,
    main,
)
from facematch.api.security import export_signer
from facematch.config import Settings
from facematch.engine.decoding import decode_image
from facematch.errors import FacematchError
from facematch.gallery.opening import open_gallery_store
from tests.support import KEY_A, KEY_B, image_bytes, keys_file_text

REPO = Path(__file__).resolve().parents[1]
#: person -> the photos enrolled; the next photo of each is the probe
PEOPLE = {"Aaron_Peirsol": 2, "Colin_Powell": 3, "Serena_Williams": 2, "Hugo_Chavez": 2}


def photo(lfw: Path, person: str, index: int) -> Path:
    """The person's ``index``-th LFW photo (in name order, from 0)."""
    return sorted((lfw / "images" / person).glob("*.jpg"))[index]


@pytest.fixture(scope="module")
def photo_tree(lfw, tmp_path_factory) -> Path:
    """PHOTOS/<person>/<photo> for PEOPLE, plus a blank photo, a file that is no photo, a
    folder whose name is not an id and a loose photo."""
    root = tmp_path_factory.mktemp("photos")
    for person, count in PEOPLE.items():
        (root / person).mkdir()
        for index in range(count):
            source = photo(lfw, person, index)
            (root / person / source.name).write_bytes(source.read_bytes())
    (root / "Hugo_Chavez" / "blank.png").write_bytes(
        image_bytes(Image.new("RGB", (200, 200)), "PNG")
    )
    (root / "Hugo_Chavez" / "notes.jpg").write_text("not a photo")
    (root / "bad name").mkdir()
    (root / "bad name" / "x.jpg").write_bytes(photo(lfw, "Tony_Blair", 0).read_bytes())
    (root / "loose.jpg").write_bytes(photo(lfw, "Tony_Blair", 1).read_bytes())
    return root


@pytest.fixture(scope="module")
def probes(engine, lfw) -> dict[str, np.ndarray]:
    """Each person's first photo not enrolled, embedded as the service would."""
    out = {}
    for person, count in PEOPLE.items():
        image = decode_image(photo(lfw, person, count).read_bytes(), 40_000_000, "probe")
        out[person] = engine.embed([engine.detect(image).primary.crop]).vectors[0]
    return out


def test_enrol_stores_each_photos_primary_face_under_its_folder_and_lists_the_rest(
    engine, settings, photo_tree, probes, tmp_path
):
    store = open_gallery_store(f"sqlite:///{tmp_path / 'gallery.db'}")
    done = enrol_folder(store, engine, "staff", photo_tree, settings.max_pixels, progress=False)

    assert done.faces == PEOPLE
    assert set(done.skipped) == {
        "Hugo_Chavez/blank.png",
        "Hugo_Chavez/notes.jpg",
        "bad name/",
        "loose.jpg",
    }
    assert done.skipped["Hugo_Chavez/blank.png"] == "no face found"
    assert store.gallery_size("staff") == sum(PEOPLE.values())
    face = store.get_subject("staff", "Colin_Powell").faces[0]
    assert face.model == engine.model_name and face.source.image_width == 250
    for person, vector in probes.items():
        assert store.search_subjects("staff", vector, engine.model_name, 1)[0].subject == person
    store.close()


def test_the_command_enrols_prints_a_summary_and_fails_on_skipped_photos(photo_tree, tmp_path):
    url = f"sqlite:///{tmp_path / 'gallery.db'}"
    run = subprocess.run(
        [sys.executable, "-m", "deployment_utils.gallery_tool", "--url", url, "--quiet"]
        + ["enrol", str(photo_tree), "--gallery", "staff"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stderr
    assert "skipped Hugo_Chavez/blank.png: no face found" in run.stderr
    assert "enrolled 9 face(s) of 4 subject(s) into gallery 'staff'" in run.stderr
    assert open_gallery_store(url).gallery_size("staff") == 9


@pytest.fixture
def sqlite_gallery(engine, settings, photo_tree, tmp_path):
    """An SQLite gallery 'staff' enrolled from the photo tree, one subject with metadata."""
    store = open_gallery_store(f"sqlite:///{tmp_path / 'source.db'}")
    enrol_folder(store, engine, "staff", photo_tree, settings.max_pixels, progress=False)
    store.put_subject("staff", "Colin_Powell", "Colin Powell", {"team": "blue", "n": [1, 2]})
    store.put_subject("staff", "Zoe_New", None, None)  # no face yet
    yield store
    store.close()


def test_export_from_sqlite_then_import_into_postgres_searches_the_same(
    sqlite_gallery, postgres, probes, engine, tmp_path, monkeypatch
):
    monkeypatch.setenv("FACEMATCH_SIGNING_KEYS", f"{KEY_A},{KEY_B}")
    export = tmp_path / "staff.fmg"
    source_url = f"sqlite:///{sqlite_gallery.path}"
    assert main(["--url", source_url, "--quiet", "export", "--gallery", "staff", str(export)]) == 0
    lines = export.read_bytes().splitlines()
    assert json.loads(lines[0])["model"] == engine.model_name
    assert json.loads(lines[-1])["end"] == {"subjects": 5, "faces": 9}
    assert json.loads(lines[-1])["signature"].startswith("v1.")

    assert main(["--url", postgres, "--quiet", "import", str(export)]) == 0

    exported = sqlite_gallery.audit_events("staff", limit=1000).events[-1]
    assert (exported.key, exported.action, exported.outcome) == (
        "gallery_tool",
        "export",
        {"subjects": 5, "faces": 9},
    )
    target = open_gallery_store(postgres)
    try:
        trail = target.audit_events("staff", limit=1000).events
        assert {(e.key, e.action) for e in trail} == {("gallery_tool", "import")}
        assert sum(e.outcome["faces"] for e in trail if e.subject is None) == 9
        assert target.get_subject("staff", "Zoe_New").faces == ()
        colin = target.get_subject("staff", "Colin_Powell")
        assert colin.subject.name == "Colin Powell"
        assert colin.subject.metadata == {"team": "blue", "n": [1, 2]}
        before = sqlite_gallery.get_subject("staff", "Colin_Powell")
        assert [f.source for f in colin.faces] == [f.source for f in before.faces]
        np.testing.assert_array_equal(
            target.subject_vectors("staff", "Colin_Powell", engine.model_name),
            sqlite_gallery.subject_vectors("staff", "Colin_Powell", engine.model_name),
        )
        for vector in probes.values():
            there = target.search_subjects("staff", vector, engine.model_name, 4)
            here = sqlite_gallery.search_subjects("staff", vector, engine.model_name, 4)
            assert [c.subject for c in there] == [c.subject for c in here]
            assert [c.distance for c in there] == pytest.approx(
                [c.distance for c in here], abs=1e-5
            )
    finally:
        target.close()


def test_import_refuses_altered_unsigned_foreign_or_other_model_exports_writing_nothing(
    sqlite_gallery, engine, tmp_path
):
    signed, unsigned, foreign = (tmp_path / n for n in ("signed", "unsigned", "foreign"))
    by_a, by_b = (export_signer(Settings(signing_keys=key)) for key in (KEY_A, KEY_B))
    with signed.open("wb") as out:
        export_gallery(
            sqlite_gallery,
            "staff",
            out,
            export_signer(Settings(signing_keys=KEY_A)),
            progress=False,
        )
    with unsigned.open("wb") as out:
        export_gallery(sqlite_gallery, "staff", out, None, progress=False)
    with foreign.open("wb") as out:
        export_gallery(
            sqlite_gallery,
            "staff",
            out,
            export_signer(Settings(signing_keys=KEY_B)),
            progress=False,
        )
    lines = signed.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[2])
    vector = np.frombuffer(base64.b64decode(record["faces"][0]["vector"]), "<f4")
    record["faces"][0]["vector"] = base64.b64encode((vector * -1).tobytes()).decode()
    altered = tmp_path / "altered"
    altered.write_bytes(b"".join([*lines[:2], json.dumps(record).encode() + b"\n", *lines[3:]]))
    truncated = tmp_path / "truncated"
    truncated.write_bytes(b"".join(lines[:-2] + lines[-1:]))

    store = open_gallery_store(f"sqlite:///{tmp_path / 'target.db'}")
    signer = export_signer(Settings(signing_keys=KEY_A))
    model = engine.model_name
    refusals = {
        altered: "altered",
        unsigned: "unsigned",
        foreign: "does not hold",
        truncated: "incomplete",
    }
    for path, reason in refusals.items():
        with pytest.raises(FacematchError, match=reason):
            import_gallery(store, path, model, signer, progress=False)
    with pytest.raises(FacematchError, match=f"model {re.escape(repr(model))}.*runs 'other-model'"):
        import_gallery(store, signed, "other-model", signer, progress=False)
    assert store.gallery_size("staff") == 0

    assert import_gallery(store, signed, model, signer, "copy", progress=False).faces == 9
    with pytest.raises(FacematchError, match="already holds faces"):
        import_gallery(store, signed, model, signer, "copy", progress=False)
    # without keys the signature is not checked: an unsigned export imports
    assert import_gallery(store, unsigned, model, None, "plain", progress=False).faces == 9
    store.close()


# --- over the API, with scoped keys (--server) -------------------------------------------------

CLERK, ADMIN = "tool-clerk-0123456789ab", "tool-admin-0123456789ab"


@pytest.fixture(scope="module")
def scoped_server(module_gunicorn, tmp_path_factory):
    """A service whose keys are an enrol key and an admin key, both on galleries ``site-*``;
    the key files the tool reads."""
    folder = tmp_path_factory.mktemp("scoped")
    (folder / "keys.toml").write_text(
        keys_file_text(
            {CLERK: ("clerk", ["enrol"], ["site-*"]), ADMIN: ("admin", ["admin"], ["site-*"])}
        )
    )
    for name, key in (("clerk.key", CLERK), ("admin.key", ADMIN)):
        (folder / name).write_text(key + "\n")
    server = module_gunicorn(
        FACEMATCH_GALLERY_URL=f"sqlite:///{folder / 'g.db'}",
        FACEMATCH_KEYS_FILE=str(folder / "keys.toml"),
    )
    return server, folder


def tool(server, key_file: Path, *args: str) -> int:
    return main(["--server", server.url, "--key-file", str(key_file), "--quiet", *args])


def test_over_the_api_the_tool_enrols_exports_and_imports_within_its_keys_roles(
    scoped_server, photo_tree, tmp_path, capsys
):
    server, keys = scoped_server
    assert tool(server, keys / "clerk.key", "enrol", str(photo_tree), "--gallery", "site-a") == 1
    report = capsys.readouterr().err
    assert "enrolled 9 face(s) of 4 subject(s)" in report and "skipped 4" in report
    assert "Hugo_Chavez/blank.png: 422:" in report  # no face: skipped, not fatal

    # out of the key's galleries, or beyond its role: stopped with the API's message
    assert tool(server, keys / "clerk.key", "enrol", str(photo_tree), "--gallery", "hq") == 2
    assert "error: 403: this key ('clerk') may not use this gallery" in capsys.readouterr().err
    export = tmp_path / "site-a.fmg"
    assert tool(server, keys / "clerk.key", "export", "--gallery", "site-a", str(export)) == 2
    assert "lacks the 'admin' role" in capsys.readouterr().err

    assert tool(server, keys / "admin.key", "export", "--gallery", "site-a", str(export)) == 0
    assert "exported 9 face(s) of 4 subject(s)" in capsys.readouterr().err
    assert tool(server, keys / "admin.key", "import", str(export), "--gallery", "site-b") == 0
    assert "imported 9 face(s) of 4 subject(s) of gallery 'site-b'" in capsys.readouterr().err
    events = requests.get(
        f"{server.url}/galleries/site-b/audit", headers={"X-API-Key": ADMIN}, timeout=30
    ).json()["events"]
    assert {event["key"] for event in events} == {"admin"}
