"""The face engine: photos in, ranked faces and their embeddings out (``engine.FaceEngine``).

Owns decoding (``decoding``), MTCNN detection (``detection``, ``mtcnn_search``,
``mtcnn_facenet``), crops (``crops``), the embedder (``embedding``) and its weights
(``weights``), where each network runs (``backends``), the engine's options (``options``), the
threads a request's work runs on (``compute_slots``) and the start-up checks of the fast kernels
(``kernel_checks``).

May import: the base (``facematch.config``, ``facematch.errors``, ``facematch.keys``). Not Flask.
"""
