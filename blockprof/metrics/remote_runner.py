"""The board side of the SSH device: blockprof ships this file over the connection and the
board's own python runs it. It must stay standalone: the standard library, numpy and the
engine (onnxruntime or openvino) are all it may import - never blockprof.

Modes (`python runner.py MODE DIR ...`):

* install (only as `python - install DIR ENGINE` with this source on stdin, preceded by
  `RUNNER_SOURCE = '...'`): writes the runner into DIR and probes the board (python,
  numpy, the engine, the CPU, the models already there), printing one JSON line.
* upload: a tar stream on stdin -> DIR/models (each file written to `.part`, then renamed,
  so a dropped connection never leaves a truncated model behind).
* time: one JSON job line on stdin (files, interleaving orders, warmup, engine, threads,
  clock); loads every model, warms each up, times the rounds in the given orders and
  prints {"times": [[ms per round] per file]}. stdin stays open while it runs: EOF means
  blockprof's end of the connection is gone, and the runner exits at once instead of
  timing on beside a resumed run.
"""
import json
import os
import sys
import threading
import time

MODELS = "models"


def _say(obj, code=0):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
    sys.exit(code)


def _cpu_model():
    """x86: `model name`; ARM boards often only `Model` (Raspberry Pi) or `Hardware`."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and value.strip():
                    fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    for key in ("model name", "model", "hardware", "cpu model"):
        if key in fields and not fields[key].isdigit():
            return fields[key]
    import platform
    return platform.processor() or platform.machine()


def _import_engine(engine):
    if engine == "onnxruntime":
        import onnxruntime as mod
    elif engine == "openvino":
        import openvino as mod
    else:
        raise ImportError("unknown engine %r" % engine)
    return mod


def install(d, engine, source):
    import platform
    os.makedirs(os.path.join(d, MODELS), exist_ok=True)
    name = sys.argv[4] if len(sys.argv) > 4 else "runner.py"
    tmp = os.path.join(d, name + ".part")
    with open(tmp, "w") as f:
        f.write(source)
    os.replace(tmp, os.path.join(d, name))
    info = {"python": platform.python_version(), "machine": platform.machine(), "hostname": platform.node(),
            "cpu": _cpu_model(), "cores": os.cpu_count()}
    try:
        import numpy
        info["numpy"] = numpy.__version__
        info[engine] = _import_engine(engine).__version__
    except ImportError as e:
        _say({"error": "import", "detail": str(e), **info}, 3)
    models = os.path.join(d, MODELS)
    info["models"] = {n: os.path.getsize(os.path.join(models, n)) for n in os.listdir(models)
                      if not n.endswith(".part")}
    _say(info)


def upload(d):
    import shutil
    import tarfile
    models = os.path.join(d, MODELS)
    os.makedirs(models, exist_ok=True)
    stored = []
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
        for m in tar:
            name = os.path.basename(m.name)
            if not m.isfile() or name != m.name or name.startswith("."):
                continue  # only plain files, flat: nothing lands outside DIR/models
            # per-process part file: two sessions copying the same model never write into one file
            src, tmp = tar.extractfile(m), os.path.join(models, "%s.%d.part" % (name, os.getpid()))
            with open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
            os.replace(tmp, os.path.join(models, name))
            stored.append(name)
    _say({"stored": stored})


def _watch_stdin():
    """Exit when blockprof's side of the connection closes our stdin."""
    def watch():
        # the raw descriptor, not sys.stdin: a daemon thread holding the buffered reader's
        # lock makes the interpreter's shutdown abort
        while os.read(0, 65536):
            pass
        os._exit(4)
    threading.Thread(target=watch, daemon=True).start()


def _lock(d, wait_s=120.0):
    """One runner times on a board at a time (a leftover one would skew every timing)."""
    import fcntl
    f = open(os.path.join(d, "runner.lock"), "w")
    t0 = time.time()
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except OSError:
            if time.time() - t0 > wait_s:
                _say({"error": "busy", "detail": "another blockprof runner is timing on this board"}, 5)
            time.sleep(0.5)


def _loader(job):
    import numpy as np
    engine, threads, batch = job["engine"], int(job["threads"]), int(job.get("batch_size", 1))
    mod = _import_engine(engine)
    core = mod.Core() if engine == "openvino" else None

    def load(path):
        if engine == "onnxruntime":
            so = mod.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.execution_mode = mod.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = mod.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.log_severity_level = 3
            sess = mod.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            inp = sess.get_inputs()[0]
            r = int(inp.shape[-1])
            feed = {inp.name: np.random.default_rng(0).standard_normal((batch, 3, r, r)).astype(np.float32)}
            return lambda: sess.run(None, feed)
        model = core.read_model(path)
        r = int(model.inputs[0].get_partial_shape()[-1].get_length())
        compiled = core.compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False})
        req = compiled.create_infer_request()
        x = np.random.default_rng(0).standard_normal((batch, 3, r, r)).astype(np.float32)
        return lambda: req.infer({0: x})
    return load


def _clock(job):
    if job["clock"] == "wall":
        return time.perf_counter
    # CPU time, as blockprof's local engines: ONNX Runtime with 1 thread runs on the calling
    # thread; OpenVINO runs in its own worker threads, so the process's clock sees them
    return time.thread_time if job["engine"] == "onnxruntime" else time.process_time


def _log(d, what, files):
    with open(os.path.join(d, "runner.log"), "a") as f:
        f.write("%s %s %d %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), what, os.getpid(), " ".join(files)))


def _read_line():
    """The job line, read byte-wise from the descriptor so nothing after it is buffered away."""
    out = bytearray()
    while not out.endswith(b"\n"):
        b = os.read(0, 1)
        if not b:
            break
        out += b
    return out.decode()


def time_chunk(d):
    job = json.loads(_read_line())
    _watch_stdin()
    lock = _lock(d)
    files = job["files"]
    load, clock = _loader(job), _clock(job)
    runs = [load(os.path.join(d, MODELS, n)) for n in files]
    for run in runs:
        for _ in range(int(job["warmup"])):
            run()
    _log(d, "start", files)
    times = [[0.0] * len(job["orders"]) for _ in files]
    for r, order in enumerate(job["orders"]):
        for i in order:
            t0 = clock()
            runs[i]()
            times[i][r] = (clock() - t0) * 1e3
    _log(d, "done", files)
    lock.close()
    sys.stdout.write(json.dumps({"times": times}) + "\n")
    sys.stdout.flush()
    os._exit(0)  # not sys.exit: the stdin watcher is still blocked in read()


def main():
    mode, d = sys.argv[1], os.path.expanduser(sys.argv[2])
    if mode == "install":
        install(d, sys.argv[3], globals()["RUNNER_SOURCE"])
    elif mode == "upload":
        upload(d)
    elif mode == "time":
        time_chunk(d)
    else:
        _say({"error": "usage", "detail": "unknown mode %r" % mode}, 2)


if __name__ == "__main__":
    main()
