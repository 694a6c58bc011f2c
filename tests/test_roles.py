"""Keys with roles and gallery scopes: the keys file, the grants, and the app's 401/403 answers.

The matrix of every route, role and gallery through a real Gunicorn on both gallery backends is
in test_roles_gunicorn.py; this module checks the pieces and the app with Flask's test client.
"""

from __future__ import annotations

import hashlib

import pytest

from facematch.api import security
from facematch.api.app import OPEN_ENDPOINTS, create_app
from facematch.config import ConfigError
from facematch.keys import ANONYMOUS, ROLES, Grant, KeyRing, parse_keys_file
from tests.support import KEY_A, assert_error, dumps

KIOSK = "kiosk-key-0123456789abcdef"
CLERK = "clerk-key-0123456789abcdef"
SHA = hashlib.sha256(KIOSK.encode()).hexdigest()


def table(**fields) -> str:
    lines = [f"{name} = {value!r}".replace("'", '"') for name, value in fields.items()]
    return "[[keys]]\n" + "\n".join(lines) + "\n"


# --- the keys file ---


def test_keys_file_gives_each_key_its_id_roles_and_galleries():
    entries = parse_keys_file(
        table(id="lobby-kiosk", sha256=SHA, roles=["verify"], galleries=["site-a", "hq-*"])
        + table(id="clerk", sha256="ab" * 32, roles=["enrol", "verify"])
    )
    (digest, kiosk), (_, clerk) = entries
    assert digest == hashlib.sha256(KIOSK.encode()).digest()
    assert kiosk == Grant("lobby-kiosk", frozenset({"verify"}), ("site-a", "hq-*"))
    assert clerk.galleries == ("*",) and clerk.roles == {"enrol", "verify"}


@pytest.mark.parametrize(
    "text,complaint",
    [
        ("[[keys]\nid = 1", "not valid TOML"),
        ("", "one or more [[keys]] tables"),
        ('title = "x"\n' + table(id="a", sha256=SHA, roles=["verify"]), "nothing else"),
        (table(sha256=SHA, roles=["verify"]), "'id'"),
        (table(id="a b", sha256=SHA, roles=["verify"]), "'id'"),
        (table(id="a", sha256=SHA[:-1], roles=["verify"]), "'sha256'"),
        (table(id="a", key=KIOSK, sha256=SHA, roles=["verify"]), "unknown field(s) key"),
        (table(id="a", sha256=SHA, roles=[]), "'roles'"),
        (table(id="a", sha256=SHA, roles=["root"]), "'roles'"),
        (table(id="a", sha256=SHA, roles=["verify"], galleries=[]), "'galleries'"),
        (table(id="a", sha256=SHA, roles=["verify"], galleries=[""]), "'galleries'"),
        (table(id="a", sha256=SHA, roles=["verify"]) * 2, "share the id 'a'"),
        (
            table(id="a", sha256=SHA, roles=["verify"])
            + table(id="b", sha256=SHA.upper(), roles=["admin"]),
            "'a' and 'b' are one key",
        ),
    ],
)
def test_malformed_keys_file_stops_the_start_without_echoing_a_hash(text, complaint):
    with pytest.raises(ConfigError) as raised:
        parse_keys_file(text)
    message = str(raised.value)
    assert complaint in message and "FACEMATCH_KEYS_FILE" in message
    assert SHA not in message.lower() and KIOSK not in message


def test_simple_mode_keys_hold_every_role_on_every_gallery_beside_the_file(settings, keys_toml):
    path = keys_toml({KIOSK: ("kiosk", ["verify"], ["site-a"])})
    ring = KeyRing.from_settings(settings.replace(api_keys=KEY_A, keys_file=str(path)))
    simple = ring.grant_of(KEY_A)
    assert simple.roles == set(ROLES) and simple.covers("anything") and simple.id.startswith("key-")
    assert KEY_A not in simple.id
    assert ring.grant_of(KIOSK).id == "kiosk"
    assert ring.grant_of(CLERK) is None and ring.grant_of(None) is None


def test_the_same_key_in_both_places_is_refused(settings, keys_toml):
    path = keys_toml({KEY_A: ("twice", ["verify"], ["*"])})
    with pytest.raises(ConfigError, match="are one key"):
        KeyRing.from_settings(settings.replace(api_keys=KEY_A, keys_file=str(path)))


def test_reload_reads_the_new_file_and_a_malformed_one_keeps_the_keys(settings, keys_toml):
    path = keys_toml({KIOSK: ("kiosk", ["verify"], ["*"])})
    ring = KeyRing.from_settings(settings.replace(keys_file=str(path)))
    keys_toml({CLERK: ("clerk", ["enrol"], ["*"])})
    assert ring.reload() == 1
    assert ring.grant_of(KIOSK) is None and ring.grant_of(CLERK).id == "clerk"
    path.write_text("[[keys]]\nid = ")
    with pytest.raises(ConfigError):
        ring.reload()
    assert ring.grant_of(CLERK).id == "clerk"


def test_gallery_patterns_are_case_sensitive_globs():
    grant = Grant("g", frozenset({"verify"}), ("site-?", "hq-*"))
    assert grant.covers("site-a") and grant.covers("hq-") and grant.covers("hq-north.2")
    assert not grant.covers("site-ab") and not grant.covers("Site-a") and not grant.covers("hq")


def test_no_keys_makes_every_request_anonymous_with_every_role():
    assert KeyRing().grant_of(None) is ANONYMOUS and ANONYMOUS.roles == set(ROLES)


# --- the app ---


@pytest.fixture
def scoped_client(settings, engine, keys_toml):
    path = keys_toml(
        {
            KIOSK: ("kiosk", ["verify"], ["site-a"]),
            CLERK: ("clerk", ["enrol"], ["site-*"]),
        }
    )
    app = create_app(settings.replace(keys_file=str(path), api_keys=KEY_A), engine=engine)
    return app.test_client()


def test_every_route_is_open_classified_or_closed_to_all_but_admin(app):
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()} - {"static"}
    unclassified = endpoints - set(OPEN_ENDPOINTS) - set(security.ROLE_OF) - security.ANY_ROLE
    assert unclassified == set()
    assert set(security.ROLE_OF) | security.ANY_ROLE <= endpoints  # no stale name
    assert set(security.ROLE_OF.values()) == set(ROLES)
    assert security.required_role("api.some_future_route") == "admin"


def test_a_key_without_the_role_gets_403_naming_the_role(scoped_client):
    answer = scoped_client.put(
        "/galleries/site-a/subjects/s1", data=dumps({"name": "x"}), headers={"X-API-Key": KIOSK}
    )
    assert_error(answer, 403, "forbidden")
    assert "'enrol'" in answer.get_json()["error"]["message"]
    assert "kiosk" in answer.get_json()["error"]["message"]


def test_out_of_scope_answers_are_the_same_for_existing_and_missing_galleries(scoped_client):
    admin = {"X-API-Key": KEY_A}
    assert (
        scoped_client.put("/galleries/site-b/subjects/s1", json={}, headers=admin).status_code
        == 200
    )
    kiosk = {"X-API-Key": KIOSK}
    existing = scoped_client.get("/galleries/site-b/subjects/s1", headers=kiosk)
    missing = scoped_client.get("/galleries/zz-none/subjects/s1", headers=kiosk)
    assert_error(existing, 403, "forbidden")
    assert (existing.status_code, existing.get_json()) == (missing.status_code, missing.get_json())
    clerk = {"X-API-Key": CLERK}
    existing = scoped_client.get("/galleries/site-b/subjects/s1", headers=clerk)
    outside = scoped_client.get("/galleries/other/subjects/s1", headers=clerk)
    assert existing.status_code == 200 and outside.status_code == 403


def test_no_key_is_401_before_any_role_is_considered(scoped_client):
    assert_error(scoped_client.delete("/galleries/site-a"), 401, "unauthorized")
    assert_error(scoped_client.get("/key", headers={"X-API-Key": "x" * 20}), 401, "unauthorized")


def test_get_key_tells_a_client_what_its_key_may_do(scoped_client, client):
    answer = scoped_client.get("/key", headers={"Authorization": f"Bearer {KIOSK}"})
    assert answer.get_json() == {
        "keys": "on",
        "id": "kiosk",
        "roles": ["verify"],
        "galleries": ["site-a"],
    }
    assert client.get("/key").get_json() == {
        "keys": "off",
        "id": "anonymous",
        "roles": list(ROLES),
        "galleries": ["*"],
    }
