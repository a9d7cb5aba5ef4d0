#!/usr/bin/env python3
"""A real timing tool for the command device's tests: times one ONNX file with ONNX Runtime
(1 thread) and prints its result the way TensorFlow Lite's `benchmark_model` does (on
stderr, INFO-prefixed, microseconds):

    INFO: Inference timings in us: Init: 5685, First inference: 18535, Warmup (avg): 14462.3, Inference (avg): 14154.9

    python tests/tools/ort_benchmark_model.py --graph=model.onnx --num_runs=5 --warmup_runs=1

--fail makes it print an error and exit 1 the way a broken tool would; --quiet prints no
timing line (output a pattern cannot read). Each call is appended to $ORT_BENCH_LOG when set,
so tests can count how often each file was timed.
"""
import argparse
import os
import sys
import time


def log(msg: str) -> None:
    print(f"INFO: {msg}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--graph", required=True)
    ap.add_argument("--num_runs", type=int, default=5)
    ap.add_argument("--warmup_runs", type=int, default=1)
    ap.add_argument("--fail", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    log("STARTING!")
    log(f"Graph: [{a.graph}]")
    if a.fail:
        print(f"ERROR: Could not open '{a.graph}'.", file=sys.stderr)
        return 1
    import numpy as np  # after the arguments: a broken call fails as fast as a real tool's
    import onnxruntime as ort

    t0 = time.perf_counter()
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
    sess = ort.InferenceSession(a.graph, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([int(d) for d in inp.shape]).astype(np.float32)
    init_us = (time.perf_counter() - t0) * 1e6
    log(f"Loaded model {a.graph}")

    def run() -> float:
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        return (time.perf_counter() - t) * 1e6

    first = run()
    warm = [run() for _ in range(a.warmup_runs)] or [first]
    times = [run() for _ in range(a.num_runs)]
    if os.environ.get("ORT_BENCH_LOG"):
        with open(os.environ["ORT_BENCH_LOG"], "a") as f:
            f.write(os.path.basename(a.graph) + "\n")
    if a.quiet:
        log("done")
        return 0
    log(f"count={len(times)} first={times[0]:.0f} curr={times[-1]:.0f} min={min(times):.0f} "
        f"max={max(times):.0f} avg={np.mean(times):g} std={np.std(times):.0f}")
    log(f"Inference timings in us: Init: {init_us:.0f}, First inference: {first:.0f}, "
        f"Warmup (avg): {np.mean(warm):g}, Inference (avg): {np.mean(times):g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
