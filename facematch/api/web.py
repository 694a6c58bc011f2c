"""facematch's web page: ``GET /`` and its static files (``web/``), as a Flask extension.

``init_app(app)`` serves ``web/index.html`` at ``/`` and the page's scripts and style from the
app's static route (``/static/<file>``, pointed at ``web/``): plain files, no build step, nothing
fetched from elsewhere, so the page works on a closed network. These two endpoints are open
(``OPEN_ENDPOINTS``: no API key), deliberately: the files hold no data, and every API call the
page makes still needs a key when keys are on. Their responses carry a Content-Security-Policy
that allows scripts, styles and connections only from this origin and no inline script.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, request

WEB_ROOT = Path(__file__).resolve().parents[2] / "web"
#: The page's endpoints, answered without an API key (the files hold no data).
OPEN_ENDPOINTS = ("web.index", "static")
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; media-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

bp = Blueprint("web", __name__)


def init_app(app: Flask) -> None:
    """Serve the page at ``/`` and ``web/`` at ``/static/`` on ``app``, with ``PAGE_HEADERS``."""
    app.static_folder = str(WEB_ROOT)
    app.register_blueprint(bp)
    app.after_request(_page_headers)


@bp.get("/")
def index():
    """The page (``web/index.html``)."""
    return current_app.send_static_file("index.html")


def _page_headers(response: Response) -> Response:
    if request.endpoint in OPEN_ENDPOINTS:
        response.headers.update(PAGE_HEADERS)
    return response
