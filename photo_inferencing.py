"""The face engine a caller uses: photos in, ranked faces and their embeddings out.

``FaceEngine.from_settings(Settings.from_env())`` loads the networks once; ``detect`` finds and
ranks a photo's faces (``PhotoFaces`` of ``DetectedFace``), ``embed`` turns crops into unit
vectors. The engine lives in ``facematch.engine`` (its parts in their own modules there).
"""

from facematch.engine.engine import (
    DetectedFace,
    Detections,
    Embeddings,
    EngineOptions,
    FaceEngine,
    PhotoFaces,
)

__all__ = ["DetectedFace", "Detections", "Embeddings", "EngineOptions", "FaceEngine", "PhotoFaces"]
