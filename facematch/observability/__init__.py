"""What each request did, for operators: the request's ``Outcome`` (``outcome``) and its metrics
record (``record``), the MQTT message built to a versioned schema (``message``; the schema is in
monitoring/schema/), the publisher (``publisher``), the MQTT -> InfluxDB bridge (``bridge``:
``python -m facematch.observability.bridge``), ``GET /metrics`` for Prometheus (``prometheus``)
and the Flask extension that feeds both after each response to ``/photo_match``,
``/cached_match``, ``/embeddings``, ``/faces`` or a gallery route, errors included; no other route
publishes (``request_metrics``). Dashboards and the broker's and Prometheus' settings stay in
monitoring/. See docs/monitoring.md.

May import: the base, ``facematch.engine``, ``facematch.decision`` and ``facematch.gallery``;
never ``facematch.api``.
"""
