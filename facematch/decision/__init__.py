"""Deciding from embeddings: distances and the match (``scores``), the operator's decision
policy (``policy``), calibration tables (``calibration``), face quality (``quality``) and the
gallery's verify rules and 1:N identification (``gallery_scoring``). No model, no storage.

May import: the base and ``facematch.engine`` (its options name a calibration table). Not Flask.
"""
