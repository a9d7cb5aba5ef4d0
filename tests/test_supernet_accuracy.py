"""Supernet accuracy end to end on data the tests make: a generated ImageFolder of JPEGs and
randomly initialised OFA supernets saved in OFA's checkpoint format, loaded by the real code."""
from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest
import torch

from blockprof.app.main import execute
from blockprof.common.errors import UserError
from blockprof.metrics.imagenet import FastVal, FolderVal, normalize, scan_split, write_synthetic_imagefolder
from blockprof.core.registry import build_space
from blockprof.metrics.supernet_accuracy import (
    CHECKPOINTS, MEMO_NAME, SupernetAccuracy, load_supernet, read_memo, resolve_checkpoint,
    save_ofa_checkpoint, set_running_statistics,
)
from conftest import REPO, compose, run_cli

N_CLASSES, N_VAL = 3, 3  # per class


def _random_checkpoint(space, folder, seed=0):
    """A random-init supernet whose classifier only ranks the data's classes (others far below),
    so top-1 depends on the images and top-5 is always 100 %; saved as OFA does."""
    torch.manual_seed(seed)
    net = space.new_supernet()
    fc = [m for m in net.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000][-1]
    with torch.no_grad():
        fc.weight[N_CLASSES:] = 0
        fc.bias[N_CLASSES:] = -1e4
    name = CHECKPOINTS[space.supernet].filename
    return save_ofa_checkpoint(net, folder / name)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    return write_synthetic_imagefolder(tmp_path_factory.mktemp("imagenet"), N_CLASSES, n_train=6, n_val=N_VAL)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    _random_checkpoint(build_space("mbv3", resolutions=[160]), d)
    return d


def _overrides(imagenet, ckpt_dir, *extra, space="mbv3", res=160):
    return [f"space={space}", f"space.resolutions=[{res}]", "device=note10", "metric.accuracy.source=supernet",
            f"data.imagenet={imagenet}", f"metric.accuracy.checkpoint_dir={ckpt_dir}", "data.workers=0",
            "metric.accuracy.calib_images=6", "metric.accuracy.calib_batch_size=3", "metric.accuracy.batch_size=5",
            "metric.accuracy.threads=1", "tracking=none", *extra]


def _metric(tmp_path, imagenet, ckpt_dir, *extra, space=None):
    space = space or build_space("mbv3", resolutions=[160])
    cfg = compose(_overrides(imagenet, ckpt_dir, *extra, space=space.name, res=space.resolutions[0]),
                  tmp_path / "out")
    return SupernetAccuracy.from_config(cfg, space)


def test_evaluate_task_end_to_end_deterministic_and_memoised(imagenet, ckpt_dir, tmp_path):
    overrides = _overrides(imagenet, ckpt_dir, "task=evaluate", "task.num_archs=2")
    df1 = execute(compose(overrides, tmp_path / "out"), run_dir=tmp_path / "run1")
    acc = df1["accuracy"].to_numpy()
    n_val = N_CLASSES * N_VAL
    assert np.allclose(acc * n_val / 100, np.round(acc * n_val / 100))  # whole images out of 9
    memo = read_memo(tmp_path / "run1" / MEMO_NAME)
    assert len(memo) == 2
    assert sorted(v[0] for v in memo.values()) == sorted(acc)
    assert all(v[1] == 100.0 for v in memo.values())  # only the 3 data classes can rank in the top 5
    assert (tmp_path / "run1" / "archs.csv").is_file()

    # same seed, fresh run folder: recomputed from scratch, the same numbers
    df2 = execute(compose(overrides, tmp_path / "out"), run_dir=tmp_path / "run2")
    assert len(read_memo(tmp_path / "run2" / MEMO_NAME)) == 2
    assert list(df2["arch"]) == list(df1["arch"]) and np.array_equal(df2["accuracy"], acc)


def test_memo_reused_without_recomputing_and_resumes(imagenet, ckpt_dir, tmp_path):
    space = build_space("mbv3", resolutions=[160])
    archs = space.sample(np.random.default_rng(5), 2)
    m = _metric(tmp_path, imagenet, ckpt_dir, space=space)
    m.bind_run_dir(tmp_path / "run")
    first = m.evaluate(archs[:1])
    memo = tmp_path / "run" / MEMO_NAME
    assert len(memo.read_text().splitlines()) == 2  # header + 1 row, appended as computed

    # a resumed run (new metric, same run folder): only the new arch is evaluated
    m2 = _metric(tmp_path, imagenet, ckpt_dir, space=space)
    m2.bind_run_dir(tmp_path / "run")
    both = m2.evaluate(archs)
    assert both[0] == first[0]
    assert len(memo.read_text().splitlines()) == 3

    # everything memoised: nothing is calibrated or evaluated again, duplicates included
    m3 = _metric(tmp_path, imagenet, ckpt_dir, space=space)
    m3.bind_run_dir(tmp_path / "run")
    assert np.array_equal(m3.evaluate([archs[1], archs[0], archs[1]]), both[[1, 0, 1]])
    assert np.array_equal(m3.top5(archs), [100.0] * 2)
    assert m3._calib == {}  # calibration images are built before any arch is evaluated
    assert len(memo.read_text().splitlines()) == 3


def test_shared_memo_keeps_setups_apart(imagenet, ckpt_dir, tmp_path):
    space = build_space("mbv3", resolutions=[160])
    arch = space.sample(np.random.default_rng(1), 1)
    shared = tmp_path / "shared" / "memo.csv"
    a = _metric(tmp_path, imagenet, ckpt_dir, f"metric.accuracy.memo={shared}", space=space)
    a.bind_run_dir(tmp_path / "run")  # an explicit shared memo wins over the run folder
    a.evaluate(arch)
    b = _metric(tmp_path, imagenet, ckpt_dir, f"metric.accuracy.memo={shared}", "metric.accuracy.calib_images=5",
                space=space)
    assert b.fingerprint(160) != a.fingerprint(160)
    b.evaluate(arch)
    assert len(read_memo(shared)) == 2 and not (tmp_path / "run" / MEMO_NAME).exists()


def test_fast_loader_file_equals_folder_loader(imagenet, ckpt_dir, tmp_path):
    fast = tmp_path / "fast"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "preprocess_imagenet_val.py"), "--val",
                          str(imagenet / "val"), "--resolution", "160", "--out", str(fast), "--workers", "0"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    arr = np.load(fast / "val_160.npy", mmap_mode="r")
    assert arr.shape == (N_CLASSES * N_VAL, 3, 160, 160) and arr.dtype == np.uint8
    assert not list(fast.glob("*.part"))

    split = scan_split(imagenet / "val", "val")
    idx = np.array([0, 1, 2, 5, 7, 8])  # a run, then gaps: both read paths of the memory map
    folder = list(FolderVal(split, 160).batches(idx, 4))
    mapped = list(FastVal(fast, 160).batches(idx, 4))
    assert len(folder) == len(mapped) == 2
    for (x1, y1), (x2, y2) in zip(folder, mapped):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(normalize(folder[0][0], "cpu"), normalize(mapped[0][0], "cpu"))

    space = build_space("mbv3", resolutions=[160])
    archs = space.sample(np.random.default_rng(2), 1)
    by_folder = _metric(tmp_path, imagenet, ckpt_dir, space=space)
    by_file = _metric(tmp_path, imagenet, ckpt_dir, f"data.val_fast={fast}", space=space)
    assert by_file.val_source(160).description.startswith("preprocessed")
    assert by_file.fingerprint(160) == by_folder.fingerprint(160)
    assert np.array_equal(by_file.results(archs), by_folder.results(archs))

    # a seeded val subset, read through the memory map
    sub = _metric(tmp_path, imagenet, ckpt_dir, "metric.accuracy.eval_subset=7", f"data.val_fast={fast}",
                  "metric.accuracy.archs_per_pass=2", space=space)
    idx = sub.eval_indices(N_CLASSES * N_VAL)
    assert len(set(idx)) == 7 and list(idx) == sorted(idx)
    assert np.array_equal(idx, _metric(tmp_path, imagenet, ckpt_dir, "metric.accuracy.eval_subset=7",
                                       space=space).eval_indices(N_CLASSES * N_VAL))
    sub.bind_memo(tmp_path / "sub.csv")
    r = sub.results(archs)
    assert np.allclose(r[0, 0] * 7 / 100, round(r[0, 0] * 7 / 100))
    assert (tmp_path / "sub.csv").read_text().splitlines()[1].split(",")[6] == "7"  # n_val column


def test_bn_recalibration_matches_ofa(imagenet, ckpt_dir):
    from ofa.imagenet_classification.elastic_nn.utils import set_running_statistics as ofa_set_running_statistics

    from blockprof.metrics.imagenet import calibration_images
    space = build_space("mbv3", resolutions=[160])
    net = load_supernet(space, next(ckpt_dir.iterdir()))
    arch = space.sample(np.random.default_rng(3), 1)[0]
    train = scan_split(imagenet / "train", "train")
    images = calibration_images(train, 160, 7, seed=0)
    assert torch.equal(images, calibration_images(train, 160, 7, seed=0, workers=2))  # any worker count
    assert not torch.equal(images, calibration_images(train, 160, 7, seed=1))
    ours, theirs = space.build_subnet(arch, supernet=net), space.build_subnet(arch, supernet=net)
    set_running_statistics(ours, images, 4, "cpu")  # batches of 4 and 3: the weighting matters
    ofa_set_running_statistics(theirs, [(normalize(images[s:s + 4], "cpu"), None) for s in range(0, 7, 4)])
    bns = [(a, b) for a, b in zip(ours.modules(), theirs.modules()) if isinstance(a, torch.nn.BatchNorm2d)]
    assert len(bns) > 20
    for a, b in bns:
        assert torch.allclose(a.running_mean, b.running_mean, rtol=1e-4, atol=1e-5)
        assert torch.allclose(a.running_var, b.running_var, rtol=1e-4, atol=1e-5)
    fresh = space.build_subnet(arch, supernet=net)  # the supernet's own statistics were replaced
    assert not torch.allclose(fresh.first_conv.bn.running_var, ours.first_conv.bn.running_var)


@pytest.mark.parametrize("name,res", [("pn", 160), ("resnet50", 128)])
def test_other_spaces(name, res, imagenet, tmp_path):
    space = build_space(name, resolutions=[res])
    ck = tmp_path / "ck"
    _random_checkpoint(space, ck)
    m = _metric(tmp_path, imagenet, ck, space=space)
    archs = space.sample(np.random.default_rng(0), 1)
    r = m.results(archs)
    assert r.shape == (1, 2) and np.all((r >= 0) & (r <= 100)) and np.all(r[:, 1] == 100.0)
    assert np.array_equal(m.evaluate(archs), r[:, 0])


# ------------------------------------------------------------------ errors: one line each
def _one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_data_errors(imagenet, ckpt_dir, tmp_path):
    cfg = compose(["metric.accuracy.source=supernet", f"metric.accuracy.checkpoint_dir={ckpt_dir}", "tracking=none",
                   "space.resolutions=[160]"], tmp_path / "out")
    space = build_space("mbv3", resolutions=[160])
    with pytest.raises(UserError, match="needs ImageNet: set data.imagenet") as e:
        SupernetAccuracy.from_config(cfg, space)
    _one_line(e)

    cases = []
    missing = tmp_path / "nope"
    cases.append((missing, "ImageNet train folder .* does not exist"))
    noclass = tmp_path / "noclass"
    (noclass / "train").mkdir(parents=True)
    cases.append((noclass, "has no class sub-folders"))
    empty = tmp_path / "empty"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (empty / split / c).mkdir(parents=True)
    cases.append((empty, "ImageNet train split .* is empty"))
    differ = write_synthetic_imagefolder(tmp_path / "differ", 3, 1, 1, size=(8, 8))
    (differ / "val" / "n00000002").rename(differ / "val" / "n00000009")
    cases.append((differ, "class sets differ .*: 1 only in train \\(e.g. n00000002\\), 1 only in val"))
    noval = write_synthetic_imagefolder(tmp_path / "noval", 2, 1, 1, size=(8, 8))
    for f in (noval / "val").rglob("*.JPEG"):
        f.unlink()
    cases.append((noval, "ImageNet val split .* is empty"))
    for root, needle in cases:
        with pytest.raises(UserError, match=needle) as e:
            _metric(tmp_path, root, ckpt_dir, space=space)
        _one_line(e)

    with pytest.raises(UserError, match="calib_images=50 but ImageNet train .* has only 18 images") as e:
        _metric(tmp_path, imagenet, ckpt_dir, "metric.accuracy.calib_images=50", space=space).evaluate(
            space.sample(np.random.default_rng(0), 1))
    _one_line(e)
    with pytest.raises(UserError, match="preprocessed val file .*val_160.npy .* not found; make it with") as e:
        _metric(tmp_path, imagenet, ckpt_dir, f"data.val_fast={tmp_path / 'nofast'}", space=space).fingerprint(160)
    _one_line(e)
    bad = tmp_path / "badimg"
    write_synthetic_imagefolder(bad, 2, 2, 1, size=(8, 8))
    (bad / "train" / "n00000000" / "train_0_0.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="cannot read image .*train_0_0.JPEG") as e:
        _metric(tmp_path, bad, ckpt_dir, "metric.accuracy.calib_images=4", space=space).evaluate(
            space.sample(np.random.default_rng(0), 1))
    _one_line(e)


def test_checkpoint_and_device_errors(imagenet, ckpt_dir, tmp_path):
    space = build_space("mbv3", resolutions=[160])
    with pytest.raises(UserError, match="holds no checkpoint for ofa_mbv3_d234_e346_k357_w1.2") as e:
        _metric(tmp_path, imagenet, tmp_path, space=space)
    _one_line(e)
    # a pn checkpoint offered for mbv3
    pn = build_space("pn", resolutions=[160])
    wrong = tmp_path / "wrong"
    src = _random_checkpoint(pn, wrong)
    src.rename(wrong / CHECKPOINTS[space.supernet].filename)
    with pytest.raises(UserError, match="does not fit supernet ofa_mbv3_d234_e346_k357_w1.2") as e:
        load_supernet(space, wrong / CHECKPOINTS[space.supernet].filename)
    _one_line(e)
    # a checkpoint that needs full pickle (training args saved beside the weights)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"state_dict": torch.load(next(ckpt_dir.iterdir()), weights_only=True)["state_dict"],
                "args": argparse.Namespace(lr=0.1)}, pickled / "ofa_mbv3_d234_e346_k357_w1.2")
    with pytest.raises(UserError, match="pickled argparse.Namespace .* set metric.accuracy.allow_pickle=true") as e:
        load_supernet(space, pickled / "ofa_mbv3_d234_e346_k357_w1.2")
    _one_line(e)
    assert load_supernet(space, pickled / "ofa_mbv3_d234_e346_k357_w1.2", allow_pickle=True) is not None
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "ofa_mbv3_d234_e346_k357_w1.2").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="is unreadable") as e:
        load_supernet(space, garbage / "ofa_mbv3_d234_e346_k357_w1.2")
    _one_line(e)
    with pytest.raises(UserError, match="is unreadable .*No such file") as e:
        load_supernet(space, garbage / "gone")
    _one_line(e)
    with pytest.raises(UserError, match="published no supernet checkpoint 'ofa_mbv3_d234_e346_k357_w0.75'"):
        resolve_checkpoint("ofa_mbv3_d234_e346_k357_w0.75")
    with pytest.raises(UserError, match="metric.accuracy.device must be auto, cpu or cuda"):
        _metric(tmp_path, imagenet, ckpt_dir, "metric.accuracy.device=tpu", space=space)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="device=cuda but torch sees no CUDA GPU"):
            _metric(tmp_path, imagenet, ckpt_dir, "metric.accuracy.device=cuda", space=space)


def test_checkpoint_lookup_order(tmp_path, monkeypatch, ckpt_dir):
    name = "ofa_mbv3_d234_e346_k357_w1.2"
    mirror = tmp_path / "mirror"
    (mirror / "ofa" / "ofa_nets").mkdir(parents=True)
    (mirror / "ofa" / "ofa_nets" / name).write_bytes(b"m")
    monkeypatch.setenv("BLOCKPROF_ASSET_MIRROR", str(mirror))
    monkeypatch.setenv("BLOCKPROF_CACHE", str(tmp_path / "cache"))
    assert resolve_checkpoint(name) == mirror / "ofa" / "ofa_nets" / name
    (tmp_path / "cache" / "ofa" / "ofa_nets").mkdir(parents=True)
    (tmp_path / "cache" / "ofa" / "ofa_nets" / name).write_bytes(b"c")
    assert resolve_checkpoint(name) == tmp_path / "cache" / "ofa" / "ofa_nets" / name
    assert resolve_checkpoint(name, str(ckpt_dir)) == ckpt_dir / name
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "ofa_resnet50.pth").write_bytes(b"r")
    assert resolve_checkpoint("ofa_resnet50", str(tmp_path / "own")) == tmp_path / "own" / "ofa_resnet50.pth"
    assert CHECKPOINTS["ofa_resnet50"].filename == "ofa_resnet50_d0-1-2_e0.2-0.25-0.35_w0.65-0.8-1.0"


def test_cli_missing_imagenet_is_one_line(tmp_path):
    res = run_cli(["task=evaluate", "task.num_archs=1", "metric.accuracy.source=supernet",
                   f"data.imagenet={tmp_path}/none", "tracking=none", f"paths.output_root={tmp_path}/out"], cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ImageNet train folder") and "does not exist" in lines[-1]
    assert "Traceback" not in res.stderr


def test_profile_and_search_share_the_memo(imagenet, ckpt_dir, tmp_path):
    """task=profile and task=search score accuracy from the supernet; with a shared memo an
    (arch, resolution) is evaluated once across both, and a repeated search evaluates nothing."""
    import pandas as pd
    memo = tmp_path / "memo.csv"
    common = _overrides(imagenet, ckpt_dir, f"metric.accuracy.memo={memo}")
    execute(compose([*common, "task=profile", "task.all=false", "task.blocks=[[1,0,7,6]]", "task.num_archs=1"],
                    tmp_path / "out"), run_dir=tmp_path / "profile")
    samples = pd.read_csv(tmp_path / "profile" / "samples.csv")
    assert len(samples) == 2 and samples["accuracy"].between(0, 100).all()
    search = [*common, "task=search", "search.budget=3", "search.init_size=2", "search.budget_per_iter=1",
              "search.iterations=1", "search.plot=false"]
    execute(compose(search, tmp_path / "out"), run_dir=tmp_path / "search")
    scored = pd.read_csv(tmp_path / "search" / "scored.csv")
    rows = read_memo(memo)
    seen = {(a, r) for df in (samples, scored) for a, r in zip(df["arch"], df["resolution"])}
    assert len(rows) == len(seen) == len(memo.read_text().splitlines()) - 1  # each arch evaluated once
    for df in (samples, scored):
        assert [rows[(next(iter(rows))[0], a, r)][0] for a, r in zip(df["arch"], df["resolution"])] \
            == df["accuracy"].tolist()

    execute(compose(search, tmp_path / "out"), run_dir=tmp_path / "search2")  # a new run, same setup
    assert len(memo.read_text().splitlines()) - 1 == len(seen)  # nothing evaluated again
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "search2" / "scored.csv"), scored)
