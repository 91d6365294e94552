import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import pytest
import torch
from captum.attr import Saliency
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from captum_ext.datasets import BlockMNIST, SignedBasisToy
from captum_ext.metrics import DiffROARResult, count_for_fraction, diff_roar, unmask
from captum_ext.metrics._masking import keep_mask_from_rank, rank_units
from captum_ext.metrics.diff_roar import _atomic_write_json
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


def _toy_run(toy, **kw):
    (x, y, m), (xt, yt, mt) = toy
    opts = dict(fractions=TOY_FRACTIONS, seeds=(0, 1), trainer=TOY_TRAINER, progress=False)
    opts.update(kw)
    return diff_roar(TOY_FACTORY, (x, y), (xt, yt), (m.float(), mt.float()), **opts)


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


def test_oracle_signal_mask_gives_large_positive_diff_roar(block):
    (x, y, m), (xt, yt, mt) = block
    res = diff_roar(
        BLOCK_FACTORY,
        (x, y),
        (xt, yt),
        (m.float(), mt.float()),
        fractions=(0.1, 0.2, 0.5),
        seeds=(0, 1),
        trainer=BLOCK_TRAINER,
        progress=False,
    )
    # bottom-k keeps only null-block pixels: chance level; top-k keeps signal pixels
    assert bool((res.bottom < 0.65).all())
    assert bool((res.top > 0.8).all())
    assert bool((res.diff > 0.3).all()), res.diff


def test_random_attribution_gives_diff_roar_near_zero(block):
    (x, y, _), (xt, yt, _) = block
    g = torch.Generator().manual_seed(0)
    rand = (torch.rand(x.shape, generator=g), torch.rand(xt.shape, generator=g))
    res = diff_roar(
        BLOCK_FACTORY,
        (x, y),
        (xt, yt),
        rand,
        fractions=(0.1, 0.3, 0.5),
        seeds=(0, 1, 2),
        trainer=BLOCK_TRAINER,
        progress=False,
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
    kw = dict(fractions=TOY_FRACTIONS, seeds=(0, 1), trainer=TOY_TRAINER, progress=False)
    from_datasets = diff_roar(TOY_FACTORY, tr, te, attr, **kw)
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
        TOY_FACTORY,
        (x + 2.0, y),  # no input equals the fill value
        (xt + 2.0, yt),
        attr,
        fractions=(0.05, 0.3, 0.35, 0.5),
        seeds=(0,),
        trainer=rec,
        fill=-1.0,
        progress=False,
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


def test_per_pixel_aggregation_keeps_whole_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 4, 4, generator=g) + 1.0
    y = torch.arange(12) % 2
    attr = torch.randn(x.shape, generator=g)
    rec = RecordingTrainer(epochs=1)
    diff_roar(
        MLPFactory((3, 4, 4), hidden=(4,)),
        (x, y),
        (x, y),
        (attr, attr),
        fractions=(0.25,),
        seeds=(0,),
        trainer=rec,
        aggregate="abs_sum",
        progress=False,
    )
    kept = rec.seen[0] != 0.0
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


def test_resume_after_crash_recomputes_nothing_cached(toy, tmp_path):
    reference = _toy_run(toy)
    total = reference.accuracies.numel()

    crashing = CountingTrainer(**vars(TOY_TRAINER), fail_after=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _toy_run(toy, trainer=crashing, cache_dir=tmp_path)
    files = sorted(tmp_path.glob("*/*_seed*.json"))
    assert len(files) == 5
    assert not list(tmp_path.glob("*/.tmp-*"))  # atomic writes leave no partial files

    resumed = CountingTrainer(**vars(TOY_TRAINER))
    res = _toy_run(toy, trainer=resumed, cache_dir=tmp_path)
    assert len(resumed.calls) == total - 5  # only the missing cells were trained
    assert torch.equal(res.accuracies, reference.accuracies)

    again = CountingTrainer(**vars(TOY_TRAINER))
    res2 = _toy_run(toy, trainer=again, cache_dir=tmp_path)
    assert again.calls == [] and torch.equal(res2.accuracies, reference.accuracies)
    manifest = json.loads(next(tmp_path.glob("*/run.json")).read_text())
    assert "CountingTrainer" in manifest["trainer"]


def test_cache_is_keyed_by_data_attribution_and_config(toy, tmp_path):
    (x, y, m), (xt, yt, mt) = toy
    cells = 2 * len(TOY_FRACTIONS) * 2

    def calls(**kw):
        trainer = kw.pop("trainer", None) or CountingTrainer(**vars(TOY_TRAINER))
        _toy_run(toy, trainer=trainer, cache_dir=tmp_path, **kw)
        return len(trainer.calls)

    assert calls() == cells
    assert calls() == 0  # same run: everything cached
    assert calls(fill=0.5) == cells  # another fill value
    assert calls(trainer=CountingTrainer(epochs=3, lr=3e-2, batch_size=64)) == cells
    other = CountingTrainer(**vars(TOY_TRAINER))
    diff_roar(  # another attribution
        TOY_FACTORY,
        (x, y),
        (xt, yt),
        (torch.rand(x.shape), torch.rand(xt.shape)),
        fractions=TOY_FRACTIONS,
        seeds=(0, 1),
        trainer=other,
        cache_dir=tmp_path,
        progress=False,
    )
    assert len(other.calls) == cells
    assert calls(cache_key="v2") == cells
    assert len(list(tmp_path.glob("*/run.json"))) == 5


def test_corrupt_cache_file_is_recomputed(toy, tmp_path):
    reference = _toy_run(toy, trainer=CountingTrainer(**vars(TOY_TRAINER)), cache_dir=tmp_path)
    victim = sorted(tmp_path.glob("*/*_seed*.json"))[0]
    victim.write_text("{not json")
    counting = CountingTrainer(**vars(TOY_TRAINER))
    with pytest.warns(UserWarning, match="cache file"):
        res = _toy_run(toy, trainer=counting, cache_dir=tmp_path)
    assert len(counting.calls) == 1
    assert torch.equal(res.accuracies, reference.accuracies)
    json.loads(victim.read_text())  # rewritten whole


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "cell.json"
    _atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        _atomic_write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["cell.json"]


# ------------------------------------------------------------------------------------------ executors


PRELOAD = ["torch", "captum_ext.metrics.diff_roar"]
try:  # the fork server also serves the dask workers below
    import distributed  # noqa: F401

    PRELOAD.insert(0, "distributed")
except ImportError:  # pragma: no cover
    pass


def _process_context():
    """Worker processes forked from a single-threaded fork server that imported torch once.

    Forking straight from the (multi-threaded) test process can deadlock on locks held by other
    threads, and spawned workers would each import torch anew.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def test_process_pool_gives_the_same_numbers(toy, tmp_path):
    serial = _toy_run(toy)
    with ProcessPoolExecutor(max_workers=2, mp_context=_process_context()) as pool:
        parallel = _toy_run(toy, executor=pool, cache_dir=tmp_path)
    assert torch.equal(serial.accuracies, parallel.accuracies)
    assert len(list(tmp_path.glob("*/*_seed*.json"))) == serial.accuracies.numel()


def _dask_forkserver(dask, distributed):
    """Dask worker processes from the fork server (see ``_process_context``)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return dask.config.set({})
    config = dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
    distributed.utils.get_mp_context()  # dask sets its own preload list on first use ...
    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    return config


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_numbers(toy):
    """A real local Dask cluster with two worker processes, through ``client.get_executor()``."""
    dask = pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    serial = _toy_run(toy)
    with _dask_forkserver(dask, distributed):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
    with cluster, distributed.Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        parallel = _toy_run(toy, executor=client.get_executor())
    assert torch.equal(serial.accuracies, parallel.accuracies)


# ----------------------------------------------------------------------------- attribution callables


def test_callable_attribution_matches_precomputed_and_leaves_model_untouched(toy, untouched):
    (x, y, _), (xt, yt, _) = toy
    torch.manual_seed(0)
    net = fit(TOY_FACTORY(), (x, y), epochs=5, lr=1e-2, progress=False)
    sal = Saliency(net)
    pre = (sal.attribute(x, target=y).detach(), sal.attribute(xt, target=yt).detach())
    kw = dict(fractions=(0.2, 0.5), seeds=(0,), trainer=TOY_TRAINER, progress=False, model=net)
    with untouched(net):
        a = diff_roar(TOY_FACTORY, (x, y), (xt, yt), sal.attribute, batch_size=7, **kw)
    b = diff_roar(TOY_FACTORY, (x, y), (xt, yt), pre, **kw)
    assert torch.equal(a.accuracies, b.accuracies)

    def plain(inputs, labels):  # any (inputs, target) -> tensor function, positional target
        return inputs * (2 * labels[:, None] - 1)

    c = diff_roar(TOY_FACTORY, (x, y), (xt, yt), plain, **kw)
    d = diff_roar(TOY_FACTORY, (x, y), (xt, yt), (plain(x, y), plain(xt, yt)), **kw)
    assert torch.equal(c.accuracies, d.accuracies)


def test_no_retrain_variant_scores_the_given_model(toy, untouched):
    (x, y, m), (xt, yt, mt) = toy
    torch.manual_seed(0)
    net = fit(TOY_FACTORY(), (x, y), epochs=30, lr=1e-2, progress=False)
    with untouched(net):
        res = diff_roar(
            None,
            None,
            (xt, yt),
            (None, mt.float()),
            fractions=(0.1, 0.5),
            retrain=False,
            model=net,
            progress=False,
        )
    assert res.seeds == (0,) and not res.retrain and bool((res.std == 0).all())
    rank = rank_units(mt.float().reshape(len(xt), -1), torch.Generator().manual_seed(0))
    for j, k in enumerate(res.counts):
        for i, scheme in enumerate(("top", "bottom")):
            keep = keep_mask_from_rank(rank, k, scheme)
            expected = evaluate(net, (unmask(xt, keep, (10,), 0.0), yt))
            assert res.accuracies[i, j, 0].item() == expected
    assert res.diff[0] > 0.2


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
    kw = dict(fractions=(0.5,), seeds=(0,), trainer=TOY_TRAINER, progress=False)
    with pytest.raises(ValueError, match="another architecture"):
        diff_roar(_Growing(1), (x, y), (xt, yt), attr, **kw)
    with pytest.raises(ValueError, match="another architecture"):
        diff_roar(_Growing(2), (x, y), (xt, yt), attr, **kw)  # detected inside the cell
    reference = MLPFactory((10,), hidden=(5,))()
    with pytest.raises(ValueError, match="another architecture"):
        diff_roar(TOY_FACTORY, (x, y), (xt, yt), attr, model=reference, **kw)
    with pytest.raises(ValueError, match="NEW model"):
        diff_roar(lambda: reference, (x, y), (xt, yt), attr, model=reference, **kw)
    with pytest.raises(TypeError, match="nn.Module"):
        diff_roar(lambda: "not a model", (x, y), (xt, yt), attr, **kw)


def test_bad_inputs_errors(toy):
    (x, y, m), (xt, yt, mt) = toy
    attr = (m.float(), mt.float())
    kw = dict(seeds=(0,), trainer=TOY_TRAINER, progress=False)
    for bad in ((0.0, 0.5), (0.5, 1.5), (), (0.5, 0.5), (float("nan"),)):
        with pytest.raises(ValueError, match="fractions"):
            diff_roar(TOY_FACTORY, (x, y), (xt, yt), attr, fractions=bad, **kw)
    with pytest.raises(ValueError, match="empty"):
        diff_roar(TOY_FACTORY, (x[:0], y[:0]), (xt, yt), attr, **kw)
    with pytest.raises(ValueError, match="shaped like the inputs"):
        diff_roar(TOY_FACTORY, (x, y), (xt, yt), (m.float(), mt[:, :5].float()), **kw)
    with pytest.raises(ValueError, match="differ in length"):
        diff_roar(TOY_FACTORY, (x, y[:3]), (xt, yt), attr, **kw)
    with pytest.raises(TypeError, match="attribution must be"):
        diff_roar(TOY_FACTORY, (x, y), (xt, yt), m.float(), **kw)
    with pytest.raises(ValueError, match="model="):
        diff_roar(None, None, (xt, yt), attr, retrain=False, progress=False)
    with pytest.raises(ValueError, match="seed"):
        diff_roar(TOY_FACTORY, (x, y), (xt, yt), attr, seeds=(), progress=False)
    with pytest.raises(ValueError, match="aggregate"):
        diff_roar(TOY_FACTORY, (x, y), (xt, yt), attr, aggregate="mean", **kw)


# ------------------------------------------------------------------------------------------- result


def test_result_object_and_plot(toy):
    import matplotlib

    matplotlib.use("Agg")
    res = _toy_run(toy)
    acc = res.accuracies
    assert acc.shape == (2, 3, 2) and res.fractions == TOY_FRACTIONS and res.seeds == (0, 1)
    assert torch.allclose(res.diff, res.top - res.bottom)
    assert torch.allclose(res.std, (acc[0] - acc[1]).std(dim=1))
    assert res.cells[("bottom", 0.5, 1)] == acc[1, 1, 1].item()
    json.dumps(res.to_dict())
    ax = res.plot(show_parts=True)
    assert len(ax.lines) >= 3
    single = _toy_run(toy, seeds=(3,))
    assert bool((single.std == 0).all())
