"""One short check of the CUDA paths, for a machine with a GPU (a few minutes at most).

    python scripts/gpu_check.py            # needs torch with CUDA, ofa, torchvision (pip install -e .)

1. Measured latency (`MeasuredLatency`, synchronised, warm-up) of a few random mbv3 subnets
   on cuda and on cpu, batch 1: median ms and the cpu/cuda ratio.
2. Supernet accuracy on a tiny generated ImageFolder with a random-init mbv3 supernet saved
   in OFA's checkpoint format: the same archs evaluated on cuda and cpu (folder loader) and
   on cuda from the preprocessed memory-mapped file. The images are noise: the numbers only
   show that the paths agree, they say nothing about ImageNet accuracy.
Exit status 0 when cuda is present and every cuda accuracy equals the cpu one within one image.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from blockprof.metrics.imagenet import preprocess_val, write_synthetic_imagefolder
from blockprof.metrics.measured import MeasuredLatency, machine_info
from blockprof.core.registry import build_space
from blockprof.metrics.supernet_accuracy import CHECKPOINTS, SupernetAccuracy, save_ofa_checkpoint

N_CLASSES = 10


def latency_table(space, archs, repeats: int, dev: str) -> None:
    print("\n## measured latency, batch 1, median of", repeats, "runs (ms)")
    print(f"{'arch':>4} {'res':>4} {'cpu ms':>9} {'cuda ms':>9} {'cpu/cuda':>9} {'cuda spread':>11}")
    cpu = MeasuredLatency(space, device="cpu", threads=min(4, torch.get_num_threads()), warmup=3, repeats=repeats)
    gpu = MeasuredLatency(space, device=dev, threads=1, warmup=10, repeats=repeats)
    c, g = cpu.evaluate(archs), gpu.evaluate(archs)
    for i, a in enumerate(archs):
        print(f"{i:>4} {a.resolution:>4} {c[i]:>9.2f} {g[i]:>9.3f} {c[i] / g[i]:>9.1f} {gpu.last_spread[i]:>11.2f}")


def accuracy_table(space, archs, work: Path, dev: str) -> bool:
    root = write_synthetic_imagefolder(work / "imagenet", N_CLASSES, n_train=20, n_val=20, size=(96, 128))
    torch.manual_seed(0)
    net = space.new_supernet()
    fc = [m for m in net.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000][-1]
    with torch.no_grad():  # rank only the data's classes, so top-1 depends on the images
        fc.weight[N_CLASSES:] = 0
        fc.bias[N_CLASSES:] = -1e4
    ckpt = save_ofa_checkpoint(net, work / "ckpt" / CHECKPOINTS[space.supernet].filename)
    for r in space.resolutions:
        preprocess_val(root / "val", r, work / "fast", workers=4, progress=False)
    common = dict(calib_images=64, calib_batch_size=32, batch_size=50, workers=4, progress=False)
    setups = {
        "cpu folder": SupernetAccuracy(space, ckpt, root / "train", root / "val", device="cpu", **common),
        "cuda folder": SupernetAccuracy(space, ckpt, root / "train", root / "val", device=dev, **common),
        "cuda mmap": SupernetAccuracy(space, ckpt, root / "train", fast_dir=work / "fast", device=dev, **common),
    }
    print(f"\n## supernet accuracy on a generated {N_CLASSES}-class folder ({N_CLASSES * 20} val images; noise, "
          "not ImageNet), top-1 % / top-5 %")
    results, secs = {}, {}
    for name, m in setups.items():
        t0 = time.perf_counter()
        results[name] = m.results(archs)
        secs[name] = time.perf_counter() - t0
    print(f"{'arch':>4} {'res':>4} " + " ".join(f"{n:>18}" for n in setups))
    for i, a in enumerate(archs):
        print(f"{i:>4} {a.resolution:>4} " + " ".join(f"{results[n][i, 0]:>8.1f} / {results[n][i, 1]:>6.1f} "
                                                        for n in setups))
    print(f"{'s':>9} " + " ".join(f"{secs[n]:>18.1f}" for n in setups))
    one_image = 100.0 / (N_CLASSES * 20)
    ok = all(np.abs(results[n] - results["cpu folder"]).max() <= one_image + 1e-9 for n in setups)
    print("cuda agrees with cpu (within one image):", ok)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description="CUDA check: latency and supernet accuracy")
    ap.add_argument("--archs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--dry-run-cpu", action="store_true", help="run every step on cpu (checks the script itself)")
    args = ap.parse_args()
    dev = "cpu" if args.dry_run_cpu else "cuda"
    info = machine_info(torch.get_num_threads(), "cuda")
    print("machine:", {k: info[k] for k in ("torch", "cpu", "python")}, "| gpu:", info.get("gpu", "none"))
    if dev == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: nothing to check")
        return 1
    space = build_space("mbv3", resolutions=[160, 224])
    rng = np.random.default_rng(0)
    archs = [a for r in space.resolutions for a in space.sample(rng, args.archs // 2 or 1, resolution=r)]
    latency_table(space, archs, args.repeats, dev)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        ok = accuracy_table(space, archs, Path(tmp), dev)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
