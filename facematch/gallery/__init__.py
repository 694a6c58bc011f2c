"""Galleries of enrolled subjects and their embeddings (never photos): the store protocol and its
types (``store``), opening the store a URL names (``opening``), the SQL both backends share
(``sql``), SQLite (``sqlite``) with its in-memory exact search (``search``), PostgreSQL with
pgvector (``postgres``), and the access the routes use (``service``).

May import: the base, ``facematch.engine`` (its kernel checks) and ``facematch.decision`` (the
scoring rules). Not Flask.
"""
