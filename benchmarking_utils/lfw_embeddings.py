"""The primary-face embedding of every LFW image, computed once per settings and cached on disk.

The command; the cache itself (``embed_lfw``, its file names and keys) is
``deployment_utils.lfw``, shared with the calibration tables. The gallery measurements
(``benchmarking_utils.gallery_accuracy``) compare thousands of LFW images with each other, so
each image is embedded once, the way the service embeds a photo (decode, detect, the primary
face's crop, embed), and kept in ``benchmark_results/cache/lfw-embeddings-all-<key>.npz``. The
key is a hash of the settings that change an embedding, so a rerun under the same settings is
instant and other settings get their own file. A long run saves a checkpoint every few hundred
images and resumes from it.

    python -m benchmarking_utils.lfw_embeddings          # embed all of LFW (about 9,000 images)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deployment_utils.configs import parse_config
from deployment_utils.lfw import GET_LFW, cache_path, embed_lfw, lfw_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir(), help="LFW folder")
    parser.add_argument(
        "--config", default="default:", help="NAME:key=value,... on top of the environment"
    )
    args = parser.parse_args(argv)
    if not (args.lfw / "images").is_dir():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    settings = parse_config(args.config).settings
    result = embed_lfw(settings, args.lfw)
    print(
        json.dumps(
            {
                "cache": str(cache_path(settings)),
                "images_with_face": len(result.names),
                "images_without_face": len(result.without_face),
                "people": len(result.people()),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
