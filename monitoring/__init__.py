"""Request metrics: the API publishes one MQTT message per verifying request
(``publisher``), built to a versioned schema (``message``); ``bridge`` writes them into InfluxDB,
which the Grafana dashboards in ``grafana/`` read. See docs/monitoring.md.
"""
