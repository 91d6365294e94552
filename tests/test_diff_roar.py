import concurrent.futures as cf
import dataclasses
import json
import os
import pickle
import socket
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import pytest
import torch
from captum.attr import Saliency
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from captum_ext._runner import ExecutionOptions
from captum_ext._runner.workers import mp_context as _mp_context
from captum_ext.datasets import BlockMNIST, SignedBasisToy
from captum_ext.metrics import (
    DiffROARResult,
    count_for_fraction,
    diff_roar,
    diff_roar_without_retraining,
    unmask,
)
from captum_ext.metrics._masking import keep_mask_from_rank, rank_units
from captum_ext.training import MLPFactory, Trainer, evaluate, fit

# ------------------------------------------------------------------------------------------ helpers

TOY_FACTORY = MLPFactory((10,), hidden=(8,))
TOY_TRAINER = Trainer(epochs=2, lr=3e-2, batch_size=64)
TOY_FRACTIONS = (0.1, 0.5, 1.0)


@pytest.fixture(scope="module")
def toy():
    """The x = y e_j toy set: 10 coordinates, signal in one of the first five."""
    tr, te = SignedBasisToy(160, d=10, seed=1), SignedBasisToy(80, d=10, seed=2)
    x, y, m = tr.tensors()
    xt, yt, mt = te.tensors()
    return (x, y, m), (xt, yt, mt)


EXECUTION_FIELDS = ("executor", "max_in_flight", "cache_dir", "cache_key", "threads")


def _toy_run(toy, **kw):
    """DiffROAR on the toy set with the oracle signal mask (no mask control unless asked)."""
    (x, y, m), (xt, yt, mt) = toy
    opts = dict(fractions=TOY_FRACTIONS, seeds=(0, 1), trainer=TOY_TRAINER, mask_control=False)
    execution = {k: kw.pop(k) for k in EXECUTION_FIELDS if k in kw}
    if execution:
        opts["execution"] = ExecutionOptions(**execution)
    opts.update(kw)
    return diff_roar(None, (x, y), (xt, yt), (m.float(), mt.float()), model_factory=TOY_FACTORY, **opts)


@dataclass
class CountingTrainer(Trainer):
    """A Trainer that counts its calls and can crash after a number of them.

    The extra fields are hidden from ``repr`` so its cache fingerprint is the same whatever they hold.
    """

    calls: list = field(default_factory=list, repr=False, compare=False)
    fail_after: int | None = field(default=None, repr=False, compare=False)

    def __call__(self, model, data, seed=0):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls.append(seed)
        return super().__call__(model, data, seed)


@dataclass
class RecordingTrainer(Trainer):
    """Records the (unmasked) training inputs it is given, then trains briefly."""

    seen: list = field(default_factory=list, repr=False, compare=False)

    def __call__(self, model, data, seed=0):
        self.seen.append(data[0].clone())
        return super().__call__(model, data, seed)


# ------------------------------------------------------------------------- the paper's sanity checks


@pytest.fixture(scope="module")
def block():
    tr, te = BlockMNIST("train", seed=0), BlockMNIST("test", seed=0)
    return tr.tensors(), te.tensors()


BLOCK_FACTORY = MLPFactory((1, 56, 28), hidden=(16,))
BLOCK_TRAINER = Trainer(epochs=3, lr=3e-3, batch_size=32)


@pytest.mark.slow
def test_oracle_signal_mask_gives_large_positive_diff_roar(block):
    (x, y, m), (xt, yt, mt) = block
    res = diff_roar(
        None,
        (x, y),
        (xt, yt),
        (m.float(), mt.float()),
        model_factory=BLOCK_FACTORY,
        fractions=(0.1, 0.2, 0.5),
        seeds=(0, 1),
        trainer=BLOCK_TRAINER,
    )
    # the kept block's position does not depend on the label: the mask-only control is at chance
    assert res.control is not None and not res.leakage, res.control
    # bottom-k keeps only null-block pixels: chance level; top-k keeps signal pixels
    assert bool((res.bottom < 0.65).all())
    assert bool((res.top > 0.8).all())
    assert bool((res.diff > 0.3).all()), res.diff


def test_random_attribution_gives_diff_roar_near_zero(block):
    (x, y, _), (xt, yt, _) = block
    g = torch.Generator().manual_seed(0)
    rand = (torch.rand(x.shape, generator=g), torch.rand(xt.shape, generator=g))
    res = diff_roar(
        None,
        (x, y),
        (xt, yt),
        rand,
        model_factory=BLOCK_FACTORY,
        fractions=(0.1, 0.3, 0.5),
        seeds=(0, 1, 2),
        trainer=BLOCK_TRAINER,
        mask_control=False,
    )
    assert abs(float(res.diff.mean())) < 0.08, res.diff
    assert bool((res.diff.abs() < 0.15).all()), res.diff


def test_toy_oracle_and_full_fraction(toy):
    res = _toy_run(toy, seeds=(0,), trainer=Trainer(epochs=15, lr=3e-2, batch_size=32))
    assert isinstance(res, DiffROARResult)
    # k = 10% keeps exactly the one signal coordinate for top-k, nothing informative for bottom-k
    assert res.top[0] == 1.0 and res.bottom[0] < 0.7
    # k = 100% keeps everything in both schemes: identical models, identical accuracies
    assert torch.equal(res.accuracies[0, -1], res.accuracies[1, -1]) and res.diff[-1] == 0


def test_datasets_are_accepted_directly(toy):
    tr, te = SignedBasisToy(160, d=10, seed=1), SignedBasisToy(80, d=10, seed=2)
    attr = (tr.signal_masks.float(), te.signal_masks.float())
    kw = dict(fractions=TOY_FRACTIONS, seeds=(0, 1), trainer=TOY_TRAINER, mask_control=False)
    from_datasets = diff_roar(None, tr, te, attr, model_factory=TOY_FACTORY, **kw)
    assert torch.equal(from_datasets.accuracies, _toy_run(toy).accuracies)


# ------------------------------------------------------------------------ exact fractions / masking


@given(
    n=st.integers(1, 5),
    p=st.integers(1, 60),
    frac=st.floats(0.0, 1.0, allow_nan=False),
    seed=st.integers(0, 100),
)
def test_keep_masks_have_exact_counts_and_are_disjoint(n, p, frac, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (n, p), generator=g).double()  # many ties
    rank = rank_units(scores, g)
    k = count_for_fraction(frac, p)
    top, bottom = keep_mask_from_rank(rank, k, "top"), keep_mask_from_rank(rank, k, "bottom")
    assert bool((top.sum(1) == k).all()) and bool((bottom.sum(1) == k).all())
    if 2 * k <= p:
        assert not bool((top & bottom).any())
    # every kept top unit scores at least as high as every dropped one
    for i in range(n):
        if 0 < k < p:
            assert scores[i][top[i]].min() >= scores[i][~top[i]].max()
            assert scores[i][bottom[i]].max() <= scores[i][~bottom[i]].min()


def test_ties_are_broken_uniformly_and_only_among_equal_scores():
    # row pattern: a run of four equal scores, a run of two, distinct values; 20 000 seeded rows
    g = torch.Generator().manual_seed(0)
    row = torch.tensor([1.0, 5.0, 1.0, 1.0, 3.0, 1.0, 3.0, 0.5])
    rank = rank_units(row.expand(20000, -1).contiguous(), g)
    assert bool((rank[:, 1] == 0).all()) and bool((rank[:, 7] == 7).all())
    assert set(rank[:, [4, 6]].unique().tolist()) == {1, 2}
    assert set(rank[:, [0, 2, 3, 5]].unique().tolist()) == {3, 4, 5, 6}
    # each of the four tied units takes each of the four ranks about 1/4 of the time (sd ~0.003)
    freq = torch.stack([(rank[:, [0, 2, 3, 5]] == r).double().mean(0) for r in range(3, 7)])
    assert torch.allclose(freq, torch.full_like(freq, 0.25), atol=0.015)
    assert abs(float((rank[:, 4] == 1).double().mean()) - 0.5) < 0.015
    # the same generator state gives the same ranks; no generator: earlier position first
    again = rank_units(row.expand(20000, -1).contiguous(), torch.Generator().manual_seed(0))
    assert torch.equal(rank, again)
    assert rank_units(row[None]).tolist() == [[3, 0, 4, 5, 1, 6, 2, 7]]


def test_count_rounding_is_half_up_and_exact():
    assert count_for_fraction(0.05, 1568) == 78  # 78.4
    assert count_for_fraction(0.1, 1568) == 157  # 156.8
    assert count_for_fraction(0.35, 10) == 4  # 3.5 exactly (not 3.4999...)
    assert count_for_fraction(0.25, 2) == 1  # 0.5 rounds up
    assert count_for_fraction(0.7, 10) == 7  # 0.7 * 10 is 7.000000000000001 in floats
    assert count_for_fraction(1.0, 1568) == 1568


def test_diff_roar_unmasks_the_exact_number_of_coordinates(toy):
    (x, y, _), (xt, yt, _) = toy
    g = torch.Generator().manual_seed(0)
    attr = (torch.randn(x.shape, generator=g), torch.randn(xt.shape, generator=g))
    rec = RecordingTrainer(epochs=1)
    res = diff_roar(
        None,
        (x + 2.0, y),  # no input equals the fill value
        (xt + 2.0, yt),
        attr,
        model_factory=TOY_FACTORY,
        fractions=(0.05, 0.3, 0.35, 0.5),
        seeds=(0,),
        trainer=rec,
        baselines=-1.0,
        mask_control=False,
    )
    assert res.counts == (1, 3, 4, 5)
    # cells run seed-major, then fraction, then top before bottom
    expected_counts = [c for c in res.counts for _ in ("top", "bottom")]
    for seen, k in zip(rec.seen, expected_counts, strict=True):
        assert bool(((seen != -1.0).sum(dim=1) == k).all())
    # top-k keeps the k largest |attribution| coordinates, bottom-k the k smallest
    k = 3
    top_seen, bottom_seen = rec.seen[2], rec.seen[3]
    order = attr[0].abs().argsort(dim=1, descending=True)
    expected_top = torch.zeros_like(x, dtype=torch.bool).scatter_(1, order[:, :k], True)
    expected_bottom = torch.zeros_like(x, dtype=torch.bool).scatter_(1, order[:, -k:], True)
    assert torch.equal(top_seen != -1.0, expected_top)
    assert torch.equal(bottom_seen != -1.0, expected_bottom)


def _seen_at_quarter(x, attr, **kw):
    """The training inputs of the one top-k cell at k = 25% (same data for train and test)."""
    y = torch.arange(x.shape[0]) % 2
    rec = RecordingTrainer(epochs=1)
    factory = MLPFactory(tuple(x.shape[1:]), hidden=(4,))
    opts = dict(model_factory=factory, fractions=(0.25,), seeds=(0,), trainer=rec, mask_control=False)
    diff_roar(None, (x, y), (x, y), (attr, attr), **opts, **kw)
    return rec.seen[0]


def test_per_pixel_aggregation_keeps_whole_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 4, 4, generator=g) + 1.0
    attr = torch.randn(x.shape, generator=g)
    kept = _seen_at_quarter(x, attr, aggregate="abs_sum") != 0.0
    assert bool((kept.all(dim=1) == kept.any(dim=1)).all())  # channels kept together
    assert bool((kept[:, 0].sum(dim=(1, 2)) == 4).all())  # 25% of 16 pixels
    pixel_rank = attr.abs().sum(1).flatten(1).argsort(1, descending=True)[:, :4]
    expected = torch.zeros(12, 16, dtype=torch.bool).scatter_(1, pixel_rank, True)
    assert torch.equal(kept[:, 0].flatten(1), expected)


def test_unmask_fill_options():
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    keep = torch.tensor([[True, False, True, False]])
    assert unmask(x, keep, (4,), 0.0).tolist() == [[1.0, 0.0, 3.0, 0.0]]
    assert unmask(x, keep, (4,), "mean").tolist() == [[1.0, 3.0, 3.0, 3.0]]
    base = torch.tensor([9.0, 8.0, 7.0, 6.0])
    assert unmask(x, keep, (4,), base).tolist() == [[1.0, 8.0, 3.0, 6.0]]
    with pytest.raises(ValueError, match="fill"):
        unmask(x, keep, (4,), "median")


# ----------------------------------------------------------------------------- cache and resumption
# CountingTrainer / RecordingTrainer keep bookkeeping in their fields, which the content key would
# see: runs that must share cells name the trainer with cache_key (the documented escape hatch).

KEY = "toy-trainer"


def test_resume_after_crash_recomputes_nothing_cached(toy, tmp_path):
    reference = _toy_run(toy)
    total = reference.accuracies.numel()

    crashing = CountingTrainer(**vars(TOY_TRAINER), fail_after=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _toy_run(toy, trainer=crashing, cache_dir=tmp_path, cache_key=KEY)
    files = sorted(tmp_path.glob("*/cell-*.json"))
    assert len(files) == 5
    assert not list(tmp_path.glob("*/*.part"))  # atomic writes leave no partial files

    resumed = CountingTrainer(**vars(TOY_TRAINER))
    res = _toy_run(toy, trainer=resumed, cache_dir=tmp_path, cache_key=KEY)
    assert len(resumed.calls) == total - 5  # only the missing cells were trained
    assert torch.equal(res.accuracies, reference.accuracies)
    assert res.timings["cached"] == 5 and res.timings["computed"] == total - 5

    again = CountingTrainer(**vars(TOY_TRAINER))
    res2 = _toy_run(toy, trainer=again, cache_dir=tmp_path, cache_key=KEY)
    assert again.calls == [] and torch.equal(res2.accuracies, reference.accuracies)
    manifest = json.loads(next(tmp_path.glob("*/run.json")).read_text())
    assert "CountingTrainer" in manifest["trainer"] and manifest["cache_key"] == KEY


def test_cache_is_keyed_by_data_attribution_and_config(toy, tmp_path):
    (x, y, m), (xt, yt, mt) = toy
    cells = 2 * len(TOY_FRACTIONS) * 2

    def calls(**kw):
        trainer = kw.pop("trainer", None) or CountingTrainer(**vars(TOY_TRAINER))
        kw.setdefault("cache_key", KEY)
        _toy_run(toy, trainer=trainer, cache_dir=tmp_path, **kw)
        return len(trainer.calls)

    assert calls() == cells
    assert calls() == 0  # same run: everything cached
    assert calls(baselines=0.5) == cells  # another fill value
    assert calls(tie_seed=3) == cells  # another ranking (ties broken otherwise)
    other = CountingTrainer(**vars(TOY_TRAINER))
    diff_roar(  # another attribution
        None,
        (x, y),
        (xt, yt),
        (torch.rand(x.shape), torch.rand(xt.shape)),
        model_factory=TOY_FACTORY,
        fractions=TOY_FRACTIONS,
        seeds=(0, 1),
        trainer=other,
        execution=ExecutionOptions(cache_dir=tmp_path, cache_key=KEY),
        mask_control=False,
    )
    assert len(other.calls) == cells
    assert calls(cache_key="v2") == cells
    assert len(list(tmp_path.glob("*/run.json"))) == 5


def _make_trainer(epochs):
    """A closure over ``epochs``: the old cache described it by name only."""

    def train(model, data, seed):
        return fit(model, data, epochs=epochs, lr=3e-2, batch_size=32, seed=seed, progress=False)

    return train


def test_cache_tells_closures_apart_by_their_values(toy, tmp_path):
    """make_trainer(1) then make_trainer(8) on one cache once returned the 1-epoch numbers."""
    short = _toy_run(toy, trainer=_make_trainer(1), cache_dir=tmp_path)
    long = _toy_run(toy, trainer=_make_trainer(8), cache_dir=tmp_path)
    fresh = _toy_run(toy, trainer=_make_trainer(8))
    assert torch.equal(long.accuracies, fresh.accuracies)
    assert not torch.equal(long.accuracies, short.accuracies)
    assert long.timings["computed"] == long.accuracies.numel()
    again = _toy_run(toy, trainer=_make_trainer(8), cache_dir=tmp_path)  # equal content: cached
    assert again.timings["cached"] == again.accuracies.numel()
    assert torch.equal(again.accuracies, fresh.accuracies)


def test_cache_tells_lambdas_apart_by_their_code(toy, tmp_path):
    """Trainer(loss_fn=lambda ...) variants once shared one cache entry."""
    plain = Trainer(epochs=4, lr=3e-2, batch_size=32, loss_fn=lambda out, t: F.cross_entropy(out, t))
    ascent = Trainer(epochs=4, lr=3e-2, batch_size=32, loss_fn=lambda out, t: -F.cross_entropy(out, t))
    a = _toy_run(toy, trainer=plain, cache_dir=tmp_path)
    b = _toy_run(toy, trainer=ascent, cache_dir=tmp_path)
    assert b.timings["computed"] == b.accuracies.numel()
    assert torch.equal(b.accuracies, _toy_run(toy, trainer=ascent).accuracies)
    assert not torch.equal(a.accuracies, b.accuracies)
    assert len(list(tmp_path.glob("*/run.json"))) == 2


@dataclass
class _LockedTrainer(Trainer):
    guard: object = field(default_factory=threading.Lock)


def test_unfingerprintable_trainer_asks_for_cache_key(toy, tmp_path):
    with pytest.raises(TypeError, match="cache_key"):
        _toy_run(toy, trainer=_LockedTrainer(**vars(TOY_TRAINER)), cache_dir=tmp_path)
    res = _toy_run(toy, trainer=_LockedTrainer(**vars(TOY_TRAINER)), cache_dir=tmp_path, cache_key="locked/1")
    assert torch.equal(res.accuracies, _toy_run(toy).accuracies)
    _toy_run(toy, trainer=_LockedTrainer(**vars(TOY_TRAINER)))  # no cache: no key needed


def test_hand_edited_and_corrupt_cells_are_detected_and_recomputed(toy, tmp_path):
    reference = _toy_run(toy, cache_dir=tmp_path)
    victims = sorted(tmp_path.glob("*/cell-*.json"))[:2]
    rec = json.loads(victims[0].read_text())
    rec["value"] = 0.123  # a plausible hand edit, checksum left as it was
    victims[0].write_text(json.dumps(rec))
    victims[1].write_text("{not json")
    with pytest.warns(UserWarning, match="cache file") as record:
        res = _toy_run(toy, cache_dir=tmp_path)
    assert any("checksum" in str(w.message) for w in record)
    assert torch.equal(res.accuracies, reference.accuracies)
    assert res.timings["computed"] == 2
    for v in victims:  # rewritten whole and valid
        assert json.loads(v.read_text())["value"] in reference.accuracies.flatten().tolist()


def test_stale_part_files_are_cleaned(toy, tmp_path):
    _toy_run(toy, cache_dir=tmp_path)
    folder = next(tmp_path.glob("*/run.json")).parent
    dead = folder / f".tmp-{socket.gethostname()}-999999999-abcd1234.part"  # a pid that cannot exist
    old = folder / ".tmp-oldformat.part"
    alive = folder / f".tmp-{socket.gethostname()}-{os.getpid()}-feedbeef.part"  # a writer at work
    for p in (dead, old, alive):
        p.write_text("{")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    res = _toy_run(toy, cache_dir=tmp_path)
    assert res.timings["cached"] == res.accuracies.numel()
    assert not dead.exists() and not old.exists() and alive.exists()


# ------------------------------------------------------------------------------------------ executors


class _SpyExecutor(cf.Executor):
    """Runs tasks on a process pool and records the pickled size of each submission."""

    def __init__(self):
        self.inner = ProcessPoolExecutor(2, mp_context=_mp_context())
        self.sizes, self.in_flight, self.peak = [], 0, 0
        self.lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs):
        self.sizes.append(len(pickle.dumps((fn, args, kwargs))))
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        fut = self.inner.submit(fn, *args, **kwargs)
        fut.add_done_callback(self._done)
        return fut

    def _done(self, _):
        with self.lock:
            self.in_flight -= 1

    def shutdown(self, wait=True, **kw):
        self.inner.shutdown(wait=wait)


@pytest.mark.slow
def test_data_is_not_sent_with_every_cell(toy):
    """Every pickled cell once carried the whole train and test tensors."""
    (x, y, m), (xt, yt, mt) = toy
    big_x = x.repeat(1, 30)  # 160 x 300 floats: ~190 kB of data
    big_xt = xt.repeat(1, 30)
    attr = (m.float().repeat(1, 30), mt.float().repeat(1, 30))
    spy = _SpyExecutor()
    kw = dict(
        model_factory=MLPFactory((300,), hidden=(4,)), fractions=(0.1, 1.0), seeds=(0,), trainer=TOY_TRAINER
    )
    res = diff_roar(
        None, (big_x, y), (big_xt, yt), attr, execution=ExecutionOptions(executor=spy, max_in_flight=3), **kw
    )
    spy.shutdown()
    serial = diff_roar(None, (big_x, y), (big_xt, yt), attr, **kw)
    assert torch.equal(res.accuracies, serial.accuracies) and torch.equal(res.control, serial.control)
    assert len(spy.sizes) == 8 and max(spy.sizes) < 4096, spy.sizes  # a handle, not the data
    assert spy.peak <= 3


@pytest.mark.slow
def test_process_pools_give_the_same_numbers(toy, tmp_path):
    serial = _toy_run(toy)
    own = _toy_run(toy, executor=2, cache_dir=tmp_path)  # pool created here, data via initializer
    assert torch.equal(serial.accuracies, own.accuracies)
    assert len(list(tmp_path.glob("*/cell-*.json"))) == serial.accuracies.numel()
    with ProcessPoolExecutor(max_workers=2, mp_context=_mp_context()) as pool:
        given = _toy_run(toy, executor=pool)  # any executor: data through a file read once
    assert torch.equal(serial.accuracies, given.accuracies)


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_numbers(toy):
    """A real local Dask cluster with two worker processes: the Client and its get_executor()."""
    dask = pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    serial = _toy_run(toy)
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
    with cluster, distributed.Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        via_client = _toy_run(toy, executor=client)
        via_executor = _toy_run(toy, executor=client.get_executor())
    assert torch.equal(serial.accuracies, via_client.accuracies)
    assert torch.equal(serial.accuracies, via_executor.accuracies)


def test_bad_executor_is_refused(toy):
    with pytest.raises(TypeError, match="executor"):
        _toy_run(toy, executor="dask")
    with cf.ThreadPoolExecutor(2) as threads, pytest.raises(TypeError, match="thread"):
        _toy_run(toy, executor=threads)  # cells seed torch's global RNG: threads would race
    with pytest.raises(ValueError, match="executor"):
        _toy_run(toy, executor=0)


# ----------------------------------------------------------------------------- attribution callables


def test_callable_attribution_matches_precomputed_and_leaves_model_untouched(toy, untouched):
    (x, y, _), (xt, yt, _) = toy
    torch.manual_seed(0)
    net = fit(TOY_FACTORY(), (x, y), epochs=5, lr=1e-2, progress=False)
    sal = Saliency(net)
    kw = dict(
        model_factory=TOY_FACTORY, fractions=(0.2, 0.5), seeds=(0,), trainer=TOY_TRAINER, mask_control=False
    )
    for target in ("label", "prediction"):
        labels = (y, yt) if target == "label" else (net(x).argmax(1), net(xt).argmax(1))
        pre = (sal.attribute(x, target=labels[0]).detach(), sal.attribute(xt, target=labels[1]).detach())
        with untouched(net):
            a = diff_roar(
                net,
                (x, y),
                (xt, yt),
                sal.attribute,
                attribution_target=target,
                max_examples_per_batch=7,
                **kw,
            )
        b = diff_roar(net, (x, y), (xt, yt), pre, **kw)
        assert torch.equal(a.accuracies, b.accuracies)
        assert a.attribution_target == target and b.attribution_target == "given"

    def plain(inputs, labels):  # any (inputs, target) -> tensor function, positional target
        return inputs * (2 * labels[:, None] - 1)

    c = diff_roar(None, (x, y), (xt, yt), plain, attribution_target="label", **kw)
    d = diff_roar(None, (x, y), (xt, yt), (plain(x, y), plain(xt, yt)), **kw)
    assert torch.equal(c.accuracies, d.accuracies)
    with pytest.raises(ValueError, match="forward_func"):
        diff_roar(None, (x, y), (xt, yt), plain, **kw)  # 'prediction' needs the model
    with pytest.raises(ValueError, match="attribution_target"):
        diff_roar(net, (x, y), (xt, yt), plain, attribution_target="truth", **kw)


class _Scaled(nn.Module):
    """A model with an extra forward argument (Captum's additional_forward_args)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, scale):
        return self.net(x) * scale


def test_additional_forward_args_reach_model_and_attribution(toy):
    (x, y, _), (xt, yt, _) = toy
    torch.manual_seed(0)
    net = fit(TOY_FACTORY(), (x, y), epochs=5, lr=1e-2, progress=False)
    wrapped = _Scaled(net).eval()
    seen = []

    def attribute(inputs, target=None, additional_forward_args=None):
        seen.append(additional_forward_args)
        return Saliency(wrapped).attribute(
            inputs, target=target, additional_forward_args=additional_forward_args
        )

    kw = dict(fractions=(0.2, 0.5), retrain=False)
    res = diff_roar(wrapped, None, (xt, yt), attribute, additional_forward_args=(-1.0,), **kw)
    assert seen and all(a == (-1.0,) for a in seen)
    # the maps were taken at wrapped(x, -1)'s predictions ...
    flipped_pred = wrapped(xt, -1.0).argmax(1)
    pre = Saliency(wrapped).attribute(xt, target=flipped_pred, additional_forward_args=(-1.0,)).detach()
    same = diff_roar(wrapped, None, (xt, yt), (None, pre), additional_forward_args=(-1.0,), **kw)
    assert torch.equal(res.accuracies, same.accuracies)
    # ... and scored with the argument: scale -1 flips every binary decision
    plain = diff_roar(net, None, (xt, yt), (None, pre), **kw)
    assert torch.allclose(res.accuracies, 1 - plain.accuracies)


def test_no_retrain_variant_scores_the_given_model(toy, untouched):
    (x, y, m), (xt, yt, mt) = toy
    torch.manual_seed(0)
    net = fit(TOY_FACTORY(), (x, y), epochs=30, lr=1e-2, progress=False)
    with untouched(net):
        res = diff_roar(net, None, (xt, yt), (None, mt.float()), fractions=(0.1, 0.5), retrain=False)
    assert res.seeds == (0,) and not res.retrain and bool((res.std == 0).all()) and res.control is None
    rank = rank_units(mt.float().reshape(len(xt), -1), torch.Generator().manual_seed(0))
    for j, k in enumerate(res.counts):
        for i, scheme in enumerate(("top", "bottom")):
            keep = keep_mask_from_rank(rank, k, scheme)
            expected = evaluate(net, (unmask(xt, keep, (10,), 0.0), yt))
            assert res.accuracies[i, j, 0].item() == expected
    assert res.diff[0] > 0.2


# ------------------------------------------------------------------------------------ label leakage


def test_saliency_of_an_untrained_net_is_not_silent(block):
    """Maps at the true label of an UNTRAINED net gave top-5% accuracy 1.0, silently; the warning
    now says in plain words what happened and what to do (no unexplained jargon)."""
    (x, y, _), (xt, yt, _) = block
    torch.manual_seed(0)
    untrained = BLOCK_FACTORY().eval()
    kw = dict(model_factory=BLOCK_FACTORY, fractions=(0.05,), seeds=(0,), trainer=BLOCK_TRAINER)
    with pytest.warns(UserWarning, match="may be misleading") as record:
        res = diff_roar(
            untrained, (x, y), (xt, yt), Saliency(untrained).attribute, attribution_target="label", **kw
        )
    message = str(record[0].message)
    assert "attribution_target='prediction'" in message and "PredPower" not in message
    assert res.leakage and float(res.control.max()) > res.leakage_threshold
    assert res.chance == pytest.approx(max(int((yt == 0).sum()), int((yt == 1).sum())) / len(yt))
    # at the predicted label: either the curve is no longer ~1.0 or the control flags it again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred = diff_roar(untrained, (x, y), (xt, yt), Saliency(untrained).attribute, **kw)
    assert float(pred.top[0]) < 0.9 or (pred.leakage and caught)


def test_leakage_threshold_counts_sampling_noise():
    from captum_ext.metrics.diff_roar.result import leakage_threshold, majority_rate

    assert majority_rate(torch.tensor([1, 1, 0, 2])) == 0.5
    assert leakage_threshold(0.5, 10_000, 0.1) == pytest.approx(0.6)
    assert leakage_threshold(0.5, 16, 0.1) == pytest.approx(0.5 + 3 * 0.125)


# ------------------------------------------------------------------------------------------- errors


class _Growing:
    """A factory whose architecture changes after ``stable`` calls."""

    def __init__(self, stable):
        self.stable, self.calls = stable, 0

    def __call__(self):
        self.calls += 1
        width = 8 if self.calls <= self.stable else 9
        return nn.Sequential(nn.Flatten(), nn.Linear(10, width), nn.ReLU(), nn.Linear(width, 2))


def test_wrong_factory_errors(toy):
    (x, y, m), (xt, yt, mt) = toy
    attr = (m.float(), mt.float())
    kw = dict(fractions=(0.5,), seeds=(0,), trainer=TOY_TRAINER)
    with pytest.raises(ValueError, match="another architecture"):
        diff_roar(None, (x, y), (xt, yt), attr, model_factory=_Growing(1), **kw)
    with pytest.raises(ValueError, match="another architecture"):
        diff_roar(None, (x, y), (xt, yt), attr, model_factory=_Growing(2), **kw)  # detected inside the cell
    reference = MLPFactory((10,), hidden=(5,))()
    with pytest.raises(ValueError, match="another architecture"):
        diff_roar(reference, (x, y), (xt, yt), attr, model_factory=TOY_FACTORY, **kw)
    with pytest.raises(ValueError, match="NEW model"):
        diff_roar(reference, (x, y), (xt, yt), attr, model_factory=lambda: reference, **kw)
    with pytest.raises(TypeError, match="nn.Module"):
        diff_roar(None, (x, y), (xt, yt), attr, model_factory=lambda: "not a model", **kw)
    with pytest.raises(TypeError, match="model_factory"):
        diff_roar(None, (x, y), (xt, yt), attr, **kw)


def test_bad_inputs_errors(toy):
    (x, y, m), (xt, yt, mt) = toy
    attr = (m.float(), mt.float())
    kw = dict(model_factory=TOY_FACTORY, seeds=(0,), trainer=TOY_TRAINER)
    for bad in ((0.0, 0.5), (0.5, 1.5), (), (0.5, 0.5), (float("nan"),)):
        with pytest.raises(ValueError, match="fractions"):
            diff_roar(None, (x, y), (xt, yt), attr, fractions=bad, **kw)
    with pytest.raises(ValueError, match="empty"):
        diff_roar(None, (x[:0], y[:0]), (xt, yt), attr, **kw)
    with pytest.raises(ValueError, match="shaped like the inputs"):
        diff_roar(None, (x, y), (xt, yt), (m.float(), mt[:, :5].float()), **kw)
    with pytest.raises(ValueError, match="differ in length"):
        diff_roar(None, (x, y[:3]), (xt, yt), attr, **kw)
    with pytest.raises(TypeError, match="attributions must be"):
        diff_roar(None, (x, y), (xt, yt), m.float(), **kw)
    with pytest.raises(ValueError, match="forward_func"):
        diff_roar(None, None, (xt, yt), attr, retrain=False)
    with pytest.raises(ValueError, match="seed"):
        diff_roar(None, (x, y), (xt, yt), attr, model_factory=TOY_FACTORY, seeds=())
    with pytest.raises(ValueError, match="aggregate"):
        diff_roar(None, (x, y), (xt, yt), attr, aggregate="mean", **kw)
    with pytest.raises(ValueError, match="max_examples_per_batch"):
        diff_roar(None, (x, y), (xt, yt), attr, max_examples_per_batch=0, **kw)


def test_labels_out_of_range_are_refused(toy):
    """Out-of-range test labels once gave accuracy 0.0; train labels failed inside a cell."""
    (x, y, m), (xt, yt, mt) = toy
    attr = (m.float(), mt.float())
    kw = dict(model_factory=TOY_FACTORY, fractions=(0.5,), seeds=(0,), trainer=TOY_TRAINER)
    with pytest.raises(ValueError, match="test labels"):
        diff_roar(None, (x, y), (xt, yt + 2), attr, **kw)
    with pytest.raises(ValueError, match="train labels"):
        diff_roar(None, (x, y - 1), (xt, yt), attr, **kw)
    with pytest.raises(TypeError, match="train labels"):
        diff_roar(None, (x, y.float()), (xt, yt), attr, **kw)
    net = TOY_FACTORY().eval()
    with pytest.raises(ValueError, match="test labels"):
        diff_roar(net, None, (xt, yt + 2), attr, retrain=False, fractions=(0.5,))


def test_fractions_that_keep_no_unit_are_refused(toy):
    """fractions=(1e-6,) once kept k = 0 units and scored empty inputs."""
    (x, y, m), (xt, yt, mt) = toy
    with pytest.raises(ValueError, match="keep 0 of the 10 units"):
        diff_roar(
            None, (x, y), (xt, yt), (m.float(), mt.float()), model_factory=TOY_FACTORY, fractions=(1e-6, 0.5)
        )


def test_channel_mean_fill_follows_channel_dim():
    """fill="channel_mean" with channel_dim=-1 once averaged over dim 1, not the channels."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 4, 4, 3, generator=g)  # channels last
    x[..., 1] += 5.0
    attr = torch.randn(x.shape, generator=g)
    seen = _seen_at_quarter(x, attr, baselines="channel_mean", aggregate="abs_sum", channel_dim=-1)
    kept = (seen == x).all(dim=-1)  # (12, 4, 4) whole pixels kept
    assert bool((kept.flatten(1).sum(1) == 4).all())
    means = x.mean(dim=(1, 2))  # (12, 3) per example and channel
    filled = seen[~kept]  # (pixels, 3)
    expected = means[:, None, None, :].expand_as(x)[~kept]
    assert torch.allclose(filled, expected)


def test_train_mode_forward_func_is_refused_untouched(toy, untouched):
    (x, y, m), (xt, yt, mt) = toy
    net = nn.Sequential(nn.Linear(10, 8), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    with untouched(net), pytest.raises(ValueError, match="training mode"):
        diff_roar(net, None, (xt, yt), (None, mt.float()), retrain=False, fractions=(0.5,))


# ------------------------------------------------------------------------------------------- result


def test_result_object_and_plot(toy):
    import matplotlib

    matplotlib.use("Agg")
    res = _toy_run(toy, mask_control=True)
    acc = res.accuracies
    assert acc.shape == (2, 3, 2) and res.fractions == TOY_FRACTIONS and res.seeds == (0, 1)
    assert torch.allclose(res.diff, res.top - res.bottom)
    assert torch.allclose(res.std, (acc[0] - acc[1]).std(dim=1))
    assert res.cells[("bottom", 0.5, 1)] == acc[1, 1, 1].item()
    assert res.control.shape == (2, 3) and res.chance == pytest.approx(majority_of(toy))
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.units = 3
    d = json.loads(json.dumps(res.to_dict()))
    assert d["diff"] == res.diff.tolist() and d["control"]["top"] == res.control[0].tolist()
    assert "timings" not in d and d["leakage"] is False
    ax = res.plot(show_parts=True, show_control=True)
    assert len(ax.lines) >= 6
    single = _toy_run(toy, seeds=(3,))
    assert bool((single.std == 0).all())


def majority_of(toy):
    yt = toy[1][1]
    return float(torch.bincount(yt).max()) / len(yt)


# ----------------------------------------------------------------------------------- contract edges


def test_one_nan_train_coordinate_or_nan_baselines_are_refused(toy):
    (x, y, m), _ = toy
    bad = x.clone()
    bad[7, 3] = float("nan")  # silently turned [[1, 1], [0.508, 1]] into [[1, 0.492], ...] before
    xt, yt, mt = toy[1]
    with pytest.raises(ValueError, match="train inputs contain NaN"):
        diff_roar(None, (bad, y), (xt, yt), (m.float(), mt.float()), model_factory=TOY_FACTORY)
    with pytest.raises(ValueError, match="baselines must be finite"):
        _toy_run(toy, baselines=float("nan"))


def test_evaluation_batch_size_is_not_part_of_the_cache_key(toy, tmp_path):
    first = _toy_run(toy, cache_dir=tmp_path, max_examples_per_batch=16)
    again = _toy_run(toy, cache_dir=tmp_path, max_examples_per_batch=7)
    assert again.timings["cached"] == again.accuracies.numel() and again.timings["computed"] == 0
    assert torch.equal(first.accuracies, again.accuracies)


def test_a_value_edited_together_with_its_checksum_is_recomputed_with_a_warning(toy, tmp_path):
    from captum_ext._runner.cache import _checksum

    reference = _toy_run(toy, cache_dir=tmp_path)
    victim = sorted(tmp_path.glob("*/cell-*.json"))[0]
    rec = json.loads(victim.read_text())
    rec["value"] = "abc"  # once gave "too many dimensions 'str'"
    rec["checksum"] = _checksum(rec["key"], rec["cell"], rec["value"])
    victim.write_text(json.dumps(rec))
    with pytest.warns(UserWarning, match="not a valid result"):
        res = _toy_run(toy, cache_dir=tmp_path)
    assert torch.equal(res.accuracies, reference.accuracies) and res.timings["computed"] == 1


class _ClassConfiguredTrainer:
    """Its settings live in a class attribute (a dict), which the key once ignored."""

    settings = {"epochs": 1}

    def __call__(self, model, data, seed):
        return Trainer(epochs=self.settings["epochs"], lr=3e-2, batch_size=64)(model, data, seed)


def test_a_trainer_configured_by_a_class_attribute_dict_is_recomputed_when_it_changes(toy, tmp_path):
    short = _toy_run(toy, trainer=_ClassConfiguredTrainer(), cache_dir=tmp_path)
    _ClassConfiguredTrainer.settings["epochs"] = 6
    try:
        long = _toy_run(toy, trainer=_ClassConfiguredTrainer(), cache_dir=tmp_path)
        fresh = _toy_run(toy, trainer=_ClassConfiguredTrainer())
    finally:
        _ClassConfiguredTrainer.settings["epochs"] = 1
    assert long.timings["computed"] == long.accuracies.numel()
    assert torch.equal(long.accuracies, fresh.accuracies) and short.timings["computed"] > 0


def test_no_retraining_refuses_the_options_only_retraining_uses(toy):
    net = TOY_FACTORY().eval()
    _, (xt, yt, mt) = toy
    with pytest.raises(ValueError, match="seeds"):
        diff_roar(net, None, (xt, yt), (None, mt.float()), retrain=False, seeds=(0, 1))
    with pytest.raises(ValueError, match="execution"):
        diff_roar(
            net, None, (xt, yt), (None, mt.float()), retrain=False, execution=ExecutionOptions(executor=2)
        )
    a = diff_roar(net, None, (xt, yt), (None, mt.float()), retrain=False, fractions=(0.5,))
    b = diff_roar_without_retraining(net, (xt, yt), mt.float(), fractions=(0.5,))
    assert torch.equal(a.accuracies, b.accuracies)


def test_tuple_inputs_are_refused_with_the_reason(toy):
    (x, y, m), (xt, yt, mt) = toy
    with pytest.raises(TypeError, match="single-tensor inputs"):
        diff_roar(None, ((x, x), y), (xt, yt), (m.float(), mt.float()), model_factory=TOY_FACTORY)


@pytest.mark.slow
def test_lambda_trainer_runs_on_a_process_pool(toy):
    trainer = Trainer(epochs=1, lr=3e-2, batch_size=64, loss_fn=lambda o, t: F.cross_entropy(o, t))
    serial = _toy_run(toy, trainer=trainer)
    pooled = _toy_run(toy, trainer=trainer, executor=2)  # sent by value (cloudpickle)
    assert torch.equal(serial.accuracies, pooled.accuracies)
