"""What a distance means on a measured population: false-accept and false-reject rates.

A calibration table (``model_data/calibration-<model>-<key>.json``, built by
``python -m deployment_utils.calibration`` from LFW View 1) holds the cosine distances of the
same-person and the different-person pairs under one configuration: the model and the engine
options that change an embedding (``embedding_key``). ``Calibration`` answers from them:

- ``far(d)``: the share of different-person pairs at least as close as ``d`` (a match at
  distance ``d`` would have accepted that share of impostor pairs);
- ``frr(t)``: the share of same-person pairs farther than the threshold ``t`` (what the
  threshold rejects of genuine pairs);
- ``threshold_at_far(rate)``: the loosest threshold whose ``far`` stays at or below ``rate``;
  a rate below ``1 / n_different`` cannot be resolved by the sample and is refused.

Rates are counts over the sample, not a model of the population: they hold for photos like
LFW's (news photos of mostly adult, mostly light-skinned public figures). Pure: no Flask, no
model; the distances are cosine distances (a euclidean one converts monotonically).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facematch.config import ConfigError, Settings
from facematch.engine.options import EngineOptions

MODEL_DATA = Path(__file__).resolve().parents[2] / "model_data"
#: The engine options that change an embedding (threads, device and file paths do not).
EMBEDDING_OPTIONS = (
    "margin",
    "face_selection",
    "detect_max_side",
    "min_face_size",
    "detect_backend",
    "embed_backend",
    "flip_embeddings",
    "center_embeddings",
    "align_faces",
)


def embedding_settings(options: EngineOptions) -> dict:
    """The model and the options of ``options`` that change an embedding, by name."""
    return {"model": options.model, **{name: getattr(options, name) for name in EMBEDDING_OPTIONS}}


def embedding_key(options: EngineOptions) -> str:
    """A short hash (12 hex digits) of ``embedding_settings(options)``: the table's key."""
    text = json.dumps(embedding_settings(options), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def table_path(options: EngineOptions, directory: Path = MODEL_DATA) -> Path:
    """Where the table of the configuration ``options`` describe lives in ``directory``."""
    return Path(directory) / f"calibration-{options.model}-{embedding_key(options)}.json"


@dataclass(frozen=True)
class Calibration:
    """The measured cosine distances of one configuration and what they rest on."""

    same: np.ndarray = field(repr=False)  # same-person pair distances, ascending
    different: np.ndarray = field(repr=False)  # different-person pair distances, ascending
    population: str
    key: str
    source: str  # the table's file name

    @classmethod
    def from_table(cls, table: dict, source: str) -> Calibration:
        """A calibration from a table's parsed JSON (``ValueError`` if it is not one)."""
        same = np.sort(np.asarray(table["distances"]["same"], dtype=np.float64))
        different = np.sort(np.asarray(table["distances"]["different"], dtype=np.float64))
        if not len(same) or not len(different):
            raise ValueError(f"{source}: a calibration table needs both kinds of pairs")
        return cls(same, different, str(table["population"]), str(table["key"]), source)

    @property
    def pairs(self) -> dict[str, int]:
        """How many pairs of each kind the rates rest on."""
        return {"same": len(self.same), "different": len(self.different)}

    @property
    def smallest_far(self) -> float:
        """The smallest non-zero false-accept rate the sample resolves: 1 / n_different."""
        return 1.0 / len(self.different)

    def far(self, distance: float) -> float:
        """The share of different-person pairs with a distance of at most ``distance``."""
        return int(np.searchsorted(self.different, distance, side="right")) / len(self.different)

    def frr(self, threshold: float) -> float:
        """The share of same-person pairs with a distance above ``threshold``."""
        kept = int(np.searchsorted(self.same, threshold, side="right"))
        return (len(self.same) - kept) / len(self.same)

    def threshold_at_far(self, rate: float) -> float:
        """The loosest cosine threshold whose ``far`` is at most ``rate``: midway between the
        k-th and (k+1)-th closest different-person pairs, k = floor(rate * n), so it does not
        sit on a sample. ``ValueError`` when ``rate`` is below ``smallest_far``."""
        n = len(self.different)
        k = min(n, int(np.floor(rate * n + 1e-9)))
        if k < 1:
            raise ValueError(f"the smallest resolvable rate is 1/{n} = {1.0 / n:.6g}")
        if k == n:
            return float(min(2.0, self.different[-1] + 1e-6))
        return float((self.different[k - 1] + self.different[k]) / 2.0)

    def describe(self, distance: float | None, threshold: float) -> dict:
        """The ``calibration`` object of a decision at cosine ``distance`` (None: no distance)
        and cosine ``threshold``: far, frr, the population and the pair counts."""
        return {
            "far": None if distance is None else round(self.far(distance), 6),
            "frr": round(self.frr(threshold), 6),
            "population": self.population,
            "pairs": self.pairs,
        }


def load(options: EngineOptions, directory: Path = MODEL_DATA) -> Calibration | None:
    """The table of the configuration ``options`` describe in ``directory``, or None when
    there is none. ``ValueError`` for a table that exists and cannot be used."""
    path = table_path(options, directory)
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
        calibration = Calibration.from_table(table, path.name)
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"calibration table {path.name} is unusable: {error}") from None
    if calibration.key != embedding_key(options):
        raise ValueError(f"calibration table {path.name} was built for key {calibration.key}")
    return calibration


def for_settings(settings: Settings, options: EngineOptions) -> Calibration | None:
    """The table of the configuration ``options`` describe, from ``FACEMATCH_CALIBRATION_DIR``
    (default: model_data/); None when there is none, ``ConfigError`` for one that cannot be
    read. The server and the camera watcher load theirs with it."""
    directory = Path(settings.calibration_dir) if settings.calibration_dir else MODEL_DATA
    try:
        return load(options, directory)
    except ValueError as error:
        raise ConfigError(f"FACEMATCH_CALIBRATION_DIR: {error}") from None
