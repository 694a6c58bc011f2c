"""Opening a gallery store: the backend a URL names, or the one ``Settings`` configure.

The backends import ``store`` (the protocol, its types and checks); the factory, which imports
the backends, lives here, so the gallery's modules import one another in one direction.
"""

from __future__ import annotations

from facematch.gallery.audit import AuditRetention
from facematch.gallery.store import GalleryStore, StoreLimits


def default_url(data_dir: str) -> str:
    """The default gallery URL: an SQLite file in the data directory."""
    return f"sqlite:///{data_dir}/gallery.db"


def open_gallery_store(
    url: str,
    limits: StoreLimits | None = None,
    ef_search: int | None = None,
    retention: AuditRetention | None = None,
) -> GalleryStore:
    """Open the store ``url`` names (``sqlite:///PATH`` or ``postgresql://...``) without
    connecting: the first call connects, in the process and thread that makes it.
    ``ef_search``: PostgreSQL's ``hnsw.ef_search`` (None: the backend's default);
    ``retention``: how long audit events are kept (None: the default, 365 days)."""
    limits = limits or StoreLimits()
    if url.startswith("sqlite:///"):
        from facematch.gallery.sqlite import SqliteGalleryStore

        return SqliteGalleryStore(url.removeprefix("sqlite:///"), limits, retention)
    if url.startswith(("postgresql://", "postgres://")):
        from facematch.gallery.postgres import PostgresGalleryStore

        if ef_search is None:
            return PostgresGalleryStore(url, limits, retention=retention)
        return PostgresGalleryStore(url, limits, ef_search=ef_search, retention=retention)
    raise ValueError("FACEMATCH_GALLERY_URL must start with sqlite:/// or postgresql://")


def store_from_settings(settings) -> GalleryStore:
    """The store a ``config.Settings`` configures (not yet connected)."""
    url = settings.gallery_url or default_url(str(settings.data_path))
    limits = StoreLimits(settings.gallery_max_faces, settings.gallery_max_subject_faces)
    retention = AuditRetention(days=settings.audit_days)
    return open_gallery_store(url, limits, settings.gallery_ef_search, retention)
