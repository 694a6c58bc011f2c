"""The HTTP API: the app factory, the 1:1 routes and the JSON errors (``app``), the gallery
routes (``gallery_routes``), the steps the routes share (``steps``), the ``/faces`` answer
(``faces``), the embedding formats (``codec``), API keys and signed references (``security``),
the web page (``web``) and Gunicorn's hooks (``gunicorn_hooks``).

May import every other subpackage; none imports it.
"""
