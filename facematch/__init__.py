"""facematch: face verification over HTTP. Do two photos, or a stored reference embedding and a
photo, show the same person? Who of a gallery's enrolled subjects is in a photo?

One subpackage per capability, in this order; a module imports only from its own floor and the
floors below it, never from a higher one (tests/test_import_direction.py checks it):

1. the base: ``config`` (``Settings``, read from the ``FACEMATCH_`` variables), ``errors``
   (every error a request can meet), ``keys`` (API keys, checked in constant time) and
   ``bounded_json`` (JSON a client sends, parsed within size and depth limits);
2. ``engine``: photos in, ranked faces and their embeddings out (decoding, MTCNN detection,
   crops, the embedder, its weights and runtime backends);
3. ``decision``: distances, the operator's decision policy, calibration, face quality and the
   gallery's scoring rules (pure functions of embeddings);
4. ``gallery``: enrolled subjects and their embeddings (the store protocol, SQLite,
   PostgreSQL, search);
5. ``observability``: what each request did, for operators (the metrics record, MQTT, the
   InfluxDB bridge, Prometheus);
6. ``api``: the Flask app, its routes, request steps and answers, security, the web page and
   Gunicorn's hooks;
7. ``watch``: the camera watcher, a process of its own (``python -m facematch.watch``): video
   sources, face tracks, their decisions against a gallery, events over MQTT. It needs no
   Flask: it uses the floors below the API.

The repository's root keeps the front doors (``server.py``, ``wsgi.py``, ``photo_inferencing.py``,
``score_service.py``, ``gunicorn.conf.py``); ``deployment_utils`` and ``benchmarking_utils``
import this package, never the reverse. docs/layout.md follows one request through it.
"""
