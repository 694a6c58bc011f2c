"""The web page at / in a real browser: Debian's Chromium driven by Playwright against a real
Gunicorn (gallery on a temporary SQLite file). Verify two photos, see the boxes, enrol and
identify, the API's own error messages, API keys, the camera button, keyboard and phone use.
The run leaves a screenshot of each tab in docs/ (web-verify.png, web-identify.png).

Chromium comes from scripts/test-deps/browser.sh (apt); Playwright's own browser download is
never used. Without Chromium or Playwright these tests are skipped with instructions, except
under CI (``CI=true``), where that fails.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.support import DIFFERENT, KEY_A, SAME, image_bytes, keys_file_text

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"
DOCS = REPO / "docs"
CHROMIUM = Path("/usr/bin/chromium")
INSTALL = "run scripts/test-deps/browser.sh and pip install -r requirements-dev.txt"
PAGE_WEIGHT_LIMIT = 100 * 1024
#: Two photos each of two people, close enough for the strict 1:N threshold (cosine 0.3458).
LAURA = ("Laura_Bush/Laura_Bush_0016.jpg", "Laura_Bush/Laura_Bush_0021.jpg")
GERHARD = (
    "Gerhard_Schroeder/Gerhard_Schroeder_0025.jpg",
    "Gerhard_Schroeder/Gerhard_Schroeder_0027.jpg",
)
WAIT_MS = 60_000  # a detection on a busy 2-core machine can take seconds
FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
KIOSK, CLERK = "web-kiosk-0123456789ab", "web-clerk-0123456789ab"


def expect(locator):
    """Playwright's ``expect`` (its waits run without ``eval``, which the page's CSP forbids)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _missing(what: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing: {INSTALL}")
    pytest.skip(f"{what} is missing: {INSTALL}")


@pytest.fixture(scope="module")
def playwright():
    try:
        from playwright.sync_api import expect as playwright_expect
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright (PyPI)")
    playwright_expect.set_options(timeout=WAIT_MS)
    if not CHROMIUM.exists():
        _missing("chromium (Debian)")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def chromium(playwright):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def server(module_gunicorn, tmp_path_factory):
    gallery = tmp_path_factory.mktemp("web-gallery") / "g.db"
    return module_gunicorn(FACEMATCH_GALLERY_URL=f"sqlite:///{gallery}")


@pytest.fixture(scope="module")
def keyed_server(module_gunicorn, tmp_path_factory):
    folder = tmp_path_factory.mktemp("web-gallery-keyed")
    keys = folder / "keys.toml"
    keys.write_text(
        keys_file_text(
            {KIOSK: ("kiosk", ["verify"], ["site-a"]), CLERK: ("clerk", ["enrol"], ["*"])}
        )
    )
    return module_gunicorn(
        FACEMATCH_GALLERY_URL=f"sqlite:///{folder / 'g.db'}",
        FACEMATCH_API_KEYS=KEY_A,
        FACEMATCH_KEYS_FILE=str(keys),
    )


@pytest.fixture(scope="module")
def photo_files(lfw, tmp_path_factory) -> dict[str, Path]:
    """LFW photos by name, and a photo without a face (``blank``), as files to upload."""
    folder = tmp_path_factory.mktemp("web-photos")
    blank = folder / "blank.jpg"
    blank.write_bytes(image_bytes(Image.new("RGB", (240, 200), (200, 180, 160))))
    names = {*SAME, *DIFFERENT, *LAURA, *GERHARD}
    return {"blank": blank, **{name: lfw / "images" / name for name in names}}


@pytest.fixture
def open_page(chromium):
    """``open_page(url, **context_options)``: a fresh tab (its own sessionStorage) on the page,
    whose Content-Security-Policy reports are collected in ``page.csp_reports``."""
    contexts = []

    def open_(url: str, browser=None, **options):
        context = (browser or chromium).new_context(
            **{"viewport": {"width": 1100, "height": 900}, **options}
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.csp_reports = []
        page.on(
            "console",
            lambda message: (
                "Content Security Policy" in message.text and page.csp_reports.append(message.text)
            ),
        )
        page.goto(url + "/")
        page.wait_for_load_state("networkidle")
        return page

    yield open_
    for context in contexts:
        context.close()


def choose_photos(page, reference: Path, sample: Path) -> None:
    page.set_input_files("#reference-file", str(reference))
    page.set_input_files("#sample-file", str(sample))


def wait_for_boxes(page, count: int) -> None:
    expect(page.locator(".preview .box")).to_have_count(count)


# --- served files ---------------------------------------------------------------------------


def test_the_page_and_its_files_need_no_key_and_carry_a_csp_without_inline_script(keyed_server):
    page = requests.get(keyed_server.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    for name in sorted(p.name for p in WEB.iterdir() if p.suffix in (".js", ".css")):
        served = requests.get(f"{keyed_server.url}/static/{name}", timeout=10)
        assert served.status_code == 200, name
        assert served.content == (WEB / name).read_bytes()
        assert served.headers["Content-Security-Policy"] == policy
        kind = "javascript" if name.endswith(".js") else "css"
        assert kind in served.headers["Content-Type"], (name, served.headers["Content-Type"])
    # the API itself still needs the key
    assert requests.get(keyed_server.url + "/health", timeout=10).status_code == 401
    assert requests.post(keyed_server.url + "/faces", timeout=10).status_code == 401


def test_the_page_is_small_and_self_contained():
    files = [p for p in WEB.iterdir() if p.suffix in (".html", ".js", ".css")]
    assert sum(p.stat().st_size for p in files) < PAGE_WEIGHT_LIMIT
    html = (WEB / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "an inline script"
    assert not re.search(r"\son[a-z]+=", html), "an inline event handler"
    assert not re.search(r"\sstyle=", html), "an inline style"
    for path in files:
        assert not re.search(r"https?://", path.read_text()), f"{path.name} names another site"


# --- verify ---------------------------------------------------------------------------------


def test_two_photos_of_one_person_match_with_a_box_on_each(server, open_page, photo_files):
    page = open_page(server.url)
    assert page.is_hidden("#key-form")  # keys are off: no key is asked for
    choose_photos(page, photo_files[SAME[0]], photo_files[SAME[1]])
    wait_for_boxes(page, 2)
    assert page.locator(".preview .box.primary").count() == 2
    page.click("#verify-button")
    page.wait_for_selector("#verify-result:not([hidden])")
    assert page.text_content("#decision") == "match"
    assert re.match(r"distance 0\.\d+ ≤ threshold", page.text_content("#distance-text"))
    stages = page.locator("#latency th").all_text_contents()
    assert {"decode", "detection", "embedding", "scoring", "total"} <= set(stages)
    assert page.csp_reports == []
    page.screenshot(path=str(DOCS / "web-verify.png"), full_page=True)


def test_two_different_people_do_not_match(server, open_page, photo_files):
    page = open_page(server.url)
    choose_photos(page, photo_files[DIFFERENT[0]], photo_files[DIFFERENT[1]])
    wait_for_boxes(page, 2)
    page.click("#verify-button")
    page.wait_for_selector("#verify-result:not([hidden])")
    assert page.text_content("#decision") == "no match"
    assert " > threshold" in page.text_content("#distance-text")


def test_a_photo_without_a_face_shows_the_apis_message(server, open_page, photo_files):
    page = open_page(server.url)
    choose_photos(page, photo_files[SAME[0]], photo_files["blank"])
    wait_for_boxes(page, 1)
    expect(page.locator("#sample figcaption")).to_contain_text("0 faces found")
    page.click("#verify-button")
    page.wait_for_selector("#verify-error:not([hidden])")
    assert page.text_content("#verify-error") == "no face was found in 'sample'"
    assert page.is_hidden("#verify-result")


# --- enrol and identify ---------------------------------------------------------------------


def test_enrol_two_people_identify_a_third_photo_and_delete_a_subject(
    server, open_page, photo_files
):
    page = open_page(server.url)
    page.click("#tab-gallery")
    page.fill("#gallery-id", "demo")  # the module's server has a fresh gallery database
    for subject, photo in (("laura", LAURA[0]), ("gerhard", GERHARD[0])):
        page.fill("#enrol-subject", subject)
        page.set_input_files("#enrol-file", str(photo_files[photo]))
        page.click("#enrol-form button[type=submit]")
        expect(page.locator("#enrol-result")).to_contain_text(f"of {subject} ")
    expect(page.locator("#subjects tbody tr")).to_have_count(2)
    page.set_input_files("#identify-file", str(photo_files[LAURA[1]]))
    page.click("#identify-form button[type=submit]")
    page.wait_for_selector("#candidates:not([hidden])")
    assert page.text_content("#identified") == "identified: laura"
    first = page.locator("#candidates tbody tr").first.locator("td").all_text_contents()
    assert first[0] == "laura" and float(first[1]) < 0.3458 and first[2] == "yes"
    assert page.csp_reports == []
    page.screenshot(path=str(DOCS / "web-identify.png"), full_page=True)

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[aria-label='Delete subject gerhard']")
    expect(page.locator("#subjects tbody tr")).to_have_count(1)
    assert page.text_content("#subjects tbody td") == "laura"
    assert "Deleted gerhard (1 face)" in page.text_content("#subjects-note")


def test_a_gallery_error_shows_the_apis_message(server, open_page, photo_files):
    page = open_page(server.url)
    page.click("#tab-gallery")
    page.fill("#gallery-id", f"missing-{uuid.uuid4().hex[:8]}")
    page.set_input_files("#identify-file", str(photo_files[LAURA[1]]))
    page.click("#identify-form button[type=submit]")
    page.wait_for_selector("#gallery-error:not([hidden])")
    message = requests.post(
        f"{server.url}/galleries/{page.input_value('#gallery-id')}/identify",
        files={"sample": ("s.jpg", photo_files[LAURA[1]].read_bytes())},
        timeout=60,
    ).json()["error"]["message"]
    assert page.text_content("#gallery-error") == message


# --- API keys -------------------------------------------------------------------------------


def test_a_wrong_api_key_shows_the_401_message_and_the_right_one_works(
    keyed_server, open_page, photo_files
):
    page = open_page(keyed_server.url)
    page.wait_for_selector("#key-form:not([hidden])")  # GET /key answered 401: the page asks
    page.fill("#api-key", "not-the-key-0123456789")
    page.click("#key-form button")
    choose_photos(page, photo_files[SAME[0]], photo_files[SAME[1]])
    page.click("#verify-button")
    page.wait_for_selector("#verify-error:not([hidden])")
    assert page.text_content("#verify-error") == (
        "a valid API key is required (Authorization: Bearer <key> or X-API-Key)"
    )
    page.fill("#api-key", KEY_A)
    page.click("#key-form button")
    assert page.evaluate("sessionStorage.getItem('facematch-api-key')") == KEY_A
    assert page.evaluate("localStorage.length") == 0
    page.click("#verify-button")
    page.wait_for_selector("#verify-result:not([hidden])")
    assert page.text_content("#decision") == "match"


def use_key(page, key: str) -> None:
    page.wait_for_selector("#key-form:not([hidden])")
    page.fill("#api-key", key)
    page.click("#key-form button")
    page.wait_for_selector("#key-grant:not([hidden])")


def test_a_verify_only_key_sees_verify_and_identify_but_not_enrol_list_or_delete(
    keyed_server, open_page
):
    page = open_page(keyed_server.url)
    use_key(page, KIOSK)
    assert page.text_content("#key-grant") == "Key kiosk: verify on galleries site-a."
    page.click("#tab-gallery")
    assert page.is_visible("#identify-form") and page.is_visible("#gallery-id")
    assert page.is_hidden("#enrol-form") and page.is_hidden("#gallery-form button")
    assert page.is_hidden("#subjects") and page.is_visible("#tab-verify")


def test_an_enrol_only_key_sees_enrol_and_the_list_without_delete_buttons(
    keyed_server, open_page, photo_files
):
    page = open_page(keyed_server.url)
    use_key(page, CLERK)
    assert page.is_hidden("#tab-verify") and page.is_visible("#panel-gallery")
    assert page.is_hidden("#identify-form") and page.is_visible("#enrol-form")
    page.fill("#gallery-id", "clerks")
    page.fill("#enrol-subject", "laura")
    page.set_input_files("#enrol-file", str(photo_files[LAURA[0]]))
    page.click("#enrol-form button")
    expect(page.locator("#subjects tbody tr")).to_have_count(1)
    assert page.locator("#subjects tbody button").count() == 0


# --- camera, keyboard, phone ----------------------------------------------------------------


def test_without_a_camera_the_capture_button_stays_disabled_and_says_why(server, open_page):
    page = open_page(server.url)
    assert page.is_disabled("#camera-capture")
    page.click("#camera-start")
    expect(page.locator("#camera-status")).to_have_text(re.compile(r"^No camera available"))
    assert page.is_disabled("#camera-capture")


def test_a_camera_capture_becomes_the_sample(playwright, server, open_page):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FAKE_CAMERA)
    try:
        page = open_page(server.url, browser=browser)
        page.click("#camera-start")
        page.wait_for_selector("#camera-capture:enabled")
        assert page.is_visible("#camera-video")
        page.click("#camera-capture")
        expect(page.locator("#sample figcaption")).to_have_text(re.compile(r"^camera\.jpg: "))
        size = page.evaluate(
            "[...document.querySelectorAll('#sample img')].map(i => i.naturalWidth)"
        )
        assert size and size[0] > 0
        assert page.is_disabled("#camera-capture") and page.is_hidden("#camera-video")
    finally:
        browser.close()


def test_the_page_works_with_the_keyboard_and_fits_a_phone(server, open_page, photo_files):
    page = open_page(server.url, viewport={"width": 375, "height": 740}, is_mobile=True)
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('input, button')].filter(e =>
             !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
             && !e.textContent.trim()).map(e => e.id || e.outerHTML)"""
    )
    assert unlabelled == []
    page.focus("#tab-verify")
    page.keyboard.press("ArrowRight")
    assert page.is_visible("#panel-gallery") and page.is_hidden("#panel-verify")
    assert page.evaluate("document.activeElement.id") == "tab-gallery"
    page.keyboard.press("ArrowLeft")
    assert page.is_visible("#panel-verify")
    choose_photos(page, photo_files[SAME[0]], photo_files[SAME[1]])
    wait_for_boxes(page, 2)
    page.focus("#verify-button")
    page.keyboard.press("Enter")
    page.wait_for_selector("#verify-result:not([hidden])")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
