"""The fast loader's preprocessing: ImageNet val at one resolution -> one uint8 tensor file.

    python scripts/preprocess_imagenet_val.py --val /data/imagenet/val --resolution 224 --out /data/imagenet/fast
    python run.py ... metric.accuracy.source=supernet data.imagenet=/data/imagenet data.val_fast=/data/imagenet/fast

Writes <out>/val_<r>.npy (uint8 [N, 3, r, r], OFA's eval transform Resize(ceil(r/0.875)) ->
CenterCrop(r) applied, not normalised) and <out>/val_<r>.json (classes, labels, image paths).
Evaluation memory-maps the .npy, so it needs no RAM beyond the page cache: 50,000 images are
7.5 GB at 224 px, 3.8 GB at 160 px (float32 tensors, as the seed held in RAM, are 4x that).
Both files are written under temporary names and renamed when complete. Needs the project
installed (`pip install -e .`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from blockprof.common.errors import UserError
from blockprof.metrics.imagenet import preprocess_val


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--val", required=True, help="ImageNet val folder, one sub-folder per class")
    ap.add_argument("--resolution", required=True, type=int, nargs="+", help="one or more resolutions, e.g. 160 224")
    ap.add_argument("--out", required=True, help="output folder (data.val_fast)")
    ap.add_argument("--workers", type=int, default=4, help="decoding worker processes (default 4)")
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args(argv)
    try:
        for r in args.resolution:
            if r < 1:
                raise UserError(f"--resolution must be positive, not {r}")
            path = preprocess_val(Path(args.val), r, Path(args.out), workers=args.workers,
                                  batch_size=args.batch_size)
            print(f"wrote {path} (+ {path.with_suffix('.json').name})")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
