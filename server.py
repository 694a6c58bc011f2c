"""facematch's app factory, the front door of the HTTP API: ``create_app(config, engine)``.

The Flask app, its routes and error handlers live in ``facematch.api.app``; facematch/__init__.py
describes the package. ``wsgi.py`` builds the app Gunicorn serves.
"""

from facematch.api.app import create_app

__all__ = ["create_app"]
