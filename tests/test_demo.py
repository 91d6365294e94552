"""Tests of the demo (captum_ext.demo) and the ``captum-ext`` command line (captum_ext.cli)."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from captum_ext import cli, demo
from captum_ext.demo import (
    DemoConfig,
    by_confidence,
    format_report,
    map_difference,
    resolve_device,
    run_demo,
    select_examples,
)

PNG = b"\x89PNG\r\n\x1a\n"

# ---------------------------------------------------------------------------------- command line


def test_help_of_every_entry_point(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--seed", "--mode", "--quick", "--full", "--device", "--threads"):
        assert option in text
    assert text.startswith("usage: captum-ext demo")
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.demo_main(["--help"])  # python -m captum_ext.demo --help: the same parser, its own name
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m captum_ext.demo") and "--threads" in text


def test_python_dash_m_runs_the_shared_parser():
    run = subprocess.run(
        [sys.executable, "-m", "captum_ext.demo", "--mode", "huge"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "usage: python -m captum_ext.demo" in run.stderr and "invalid choice: 'huge'" in run.stderr


def test_usage_errors_exit_with_status_2(capsys):
    for argv in (
        [],
        ["nonsense"],
        ["demo", "--quick", "--full"],
        ["demo", "--mode", "huge"],
        ["demo", "--device", "tpu9"],
        ["demo", "--threads", "0"],
    ):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2, argv
    assert "unknown device 'tpu9'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_cuda_is_a_clear_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--device", "cuda", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing was started
    with pytest.raises(ValueError, match="CUDA is not available"):
        run_demo(tmp_path / "o", device="cuda")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


# ------------------------------------------------------------------------------------ pure parts


def test_presets_and_config_checks():
    quick, default, full = (DemoConfig.for_mode(m) for m in demo.MODES)
    assert quick.n_explain <= default.n_explain <= full.n_explain
    assert default.nt_samples == 50 and default.nt_stdev == 0.15  # the CASO paper's SmoothGrad
    assert demo.PAPER_SPARSITY_WINDOW == (0.75, 1.0) and demo.PAPER_C1 == 10.0  # the paper's 4.1 and 3
    assert demo.SPARSITY_WINDOW == (0.75, 0.95)  # keeps at least 5 % of the features
    for cfg in (quick, default, full):
        cfg.check()
    with pytest.raises(ValueError, match="mode"):
        DemoConfig.for_mode("huge")
    with pytest.raises(ValueError, match="n_show"):
        DemoConfig(n_explain=2, n_show=3).check()
    with pytest.raises(ValueError, match="n_show"):
        DemoConfig(n_explain=2, n_show=1).check()  # one row is the confident contrast
    with pytest.raises(ValueError, match="metric_nt_samples"):
        DemoConfig(metric_nt_samples=0).check()
    with pytest.raises(ValueError, match="c1"):
        DemoConfig(c1=0.0).check()
    with pytest.raises(ValueError, match="n_metric_test"):
        DemoConfig(n_metric_test=0).check()
    with pytest.raises(ValueError, match="caso_tol"):
        DemoConfig(caso_tol=0.0).check()
    with pytest.raises(ValueError, match="threads"):
        run_demo("unused", threads=0)


def test_map_difference_exact_values():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[6.0, 8.0], [0.0, 2.0], [-1.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    cos, dist = map_difference(a.view(4, 1, 2), b.view(4, 1, 2))
    # float64 oracle: exact up to the rounding of 1/sqrt(2)
    assert cos[:3].tolist() == pytest.approx([1.0, 0.0, -1.0], abs=1e-15)
    assert dist[:3].tolist() == pytest.approx([0.0, math.sqrt(2), 2.0], abs=1e-15)
    assert math.isnan(cos[3]) and math.isnan(dist[3])  # an all-zero map has no direction
    with pytest.raises(ValueError, match="same shape"):
        map_difference(a, b[:3])


@given(
    st.lists(st.floats(-10, 10, allow_nan=False), min_size=6, max_size=6),
    st.lists(st.floats(-10, 10, allow_nan=False), min_size=6, max_size=6),
    st.floats(0.01, 100),
)
def test_map_difference_is_scale_free_and_consistent(a, b, scale):
    a, b = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    if a.norm() < 1e-3 or b.norm() < 1e-3:
        return
    cos, dist = map_difference(a, b)
    cos_s, dist_s = map_difference(scale * a, b)
    assert float(cos_s) == pytest.approx(float(cos), abs=1e-12)  # float64: rounding only
    assert float(dist_s) == pytest.approx(float(dist), abs=1e-12)
    assert float(cos) == pytest.approx(1 - float(dist) ** 2 / 2, abs=1e-12)  # unit vectors


def test_by_confidence_bands_cover_every_image():
    conf = torch.tensor([0.1, 0.5, 0.69, 0.7, 0.95, 0.99, 1.0], dtype=torch.float64)  # edges exact
    vals = torch.arange(7.0)
    rows = by_confidence(conf, vals)
    assert [r["n"] for r in rows] == [1, 2, 1, 1, 2]  # 0.5 opens its band, 1.0 closes the last one
    assert rows[1]["min"] == 1.0 and rows[1]["max"] == 2.0 and rows[4]["median"] == 5.0
    empty = by_confidence(torch.tensor([0.95]), torch.tensor([1.0]), (0.0, 0.5, 1.0))
    assert empty[0]["n"] == 0 and math.isnan(empty[0]["median"])


def test_select_examples_most_different_then_confident():
    cos = torch.tensor([0.99, 0.5, 1.0, 0.7, 0.9, 1.0, 0.6, 1.0, 1.0, 1.0])
    conf = torch.tensor([0.9, 0.3, 0.999, 0.5, 0.8, 0.9999, 0.4, 0.99995, 0.95, 0.96])
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 5, 7, 8])
    idx, confident = select_examples(cos, conf, labels, 8, 3)
    assert len(set(idx.tolist())) == 8
    assert idx[:3].tolist() == [1, 6, 7]  # the two smallest cosines, then the most confident
    assert idx[3:7].tolist() == [3, 4, 0, 2]  # the next smallest cosines (ties in index order)
    assert confident.tolist() == [False, False, True, False, False, False, False, True]
    assert idx[7] == 9  # the second confident pick has a new label (image 5 repeats label 5)
    again = select_examples(cos, conf, labels, 8, 3)
    assert torch.equal(idx, again[0])
    with pytest.raises(ValueError):
        select_examples(cos, conf, labels, 11, 3)
    with pytest.raises(ValueError, match="n_show"):
        select_examples(cos, conf, labels, 4, 1)
    with pytest.raises(ValueError, match="same length"):
        select_examples(cos, conf[:7], labels, 4, 2)


def _fake_numbers() -> dict:
    methods = list(demo.METHODS)
    per_method = {m: {"cpu_per_image": 0.0123, "zeros": 0.25} for m in methods}
    image = {
        "confident": False,
        "digit": 1,
        "prediction": 7,
        "confidence": 0.4567,
        "hessian_rank": 5,
        "top_eigenvalue": 12.345,
        "cos_caso_cafo": 0.6123,
        "dist_caso_cafo": 0.8811,
        "cos_caso_cafo_paper_c1": 0.9812,
        "caso_lambda1": 1e-3,
        "caso_zeros": 0.8,
    }
    band = {"low": 0.0, "high": 0.5, "n": 3, "median": 0.2222, "max": 0.7777}
    band10 = {"low": 0.0, "high": 0.5, "n": 3, "median": 0.0333, "max": 0.1444}
    scored = methods + ["random"]
    return {
        "config": dataclasses.asdict(DemoConfig.for_mode("quick")),
        "data": {"classes": [0, 1], "n_train": 10, "n_test": 4},
        "model": {"test_accuracy": 0.8125, "train_accuracy": 0.9, "parameters": 7},
        "caso_vs_cafo": {
            "c1": 1.0,
            "paper_c1": 10.0,
            "n_images": 4,
            "top_eigenvalue": {"median": 0.47, "max": 17.06, "max_gain": 9.53, "max_gain_paper": 1.853},
            "min_cos": {"1": 0.6123, "10": 0.9812},
            "bands": {"1": [band], "10": [band10]},
        },
        "attributions": {
            "hessian": "closed_form",
            "n_scored": 4,
            "sparsity_window_hit": 3,
            "sparse_caso_converged": 5,
            "sparse_caso_solves": 6,
            "sparse_caso_max_error_bound": 9.87e-5,
            "sparsity_window": [0.75, 0.95],
            "sparse_caso_near_empty": 1,
            "sparse_caso_near_empty_in_window": 0,
            "sparse_caso_kept": {"min": 0.004, "median": 0.1, "max": 0.2},
            "units": 1000,
            "methods": per_method,
            "per_image": [image, dict(image, confident=True, cos_caso_cafo=1.0)],
        },
        "scores": {
            "n_images": 4,
            "methods": scored,
            "metrics": ["pixel perturbation", "DiffROAR", "leakage"],
            "higher_is_better": [True, True, False],
            "pixel_fractions": [0.5],
            "roar_fractions": [0.1],
            "n_boot": 2000,
            "seed": 0,
            "n_examples": [4, 4, 4],
            "mean": {
                "pixel perturbation": {m: 0.6789 if m != "random" else 0.1234 for m in scored},
                "DiffROAR": {m: 0.5556 for m in scored},
                "leakage": {m: 0.4321 for m in scored},
            },
            "ranks": {
                "pixel perturbation": {m: 1 if m != "random" else 8 for m in scored},
                "DiffROAR": {m: 1 for m in scored},
                "leakage": {m: 1 for m in scored},
            },
            "pairs": {
                "pixel perturbation": [["CASO", "CAFO", 0.0123, 0.0011, 0.0222, True]],
                "DiffROAR": [["CAFO", "CASO", 0.0456, -0.01, 0.1, False]],
                "leakage": [["sparse CASO", "CASO", -0.0789, -0.1, -0.05, True]],
            },
            "markdown": "| method | pixel perturbation (↑) |\n|---|:---:|\n| CASO | 0.679 [0.6, 0.7] #1 |\n",
        },
        "timings": {"training": {"wall": 1.25, "cpu": 1.0}},
        "run": {
            "command": "captum-ext demo --quick",
            "seed": 0,
            "device": "cpu",
            "torch_threads": 1,
            "torch": "x",
            "captum": "y",
            "platform": "z",
            "seconds": 3.0,
            "cpu_seconds": 2.0,
        },
        "files": {
            "figure": "attributions.png",
            "metrics_figure": "metrics.png",
            "comparison_figure": "caso_vs_cafo.png",
        },
    }


def test_report_prints_every_number():
    text = format_report(_fake_numbers())
    for piece in (
        "0.812",
        "0.432",
        "12.3",  # CPU ms per image
        "1.0e-03",
        "0.612",
        "0.881",
        "0.981",
        "12.35",
        "17.06",
        "1.85",
        "| 0-0.5 | 3 | 0.222 | 0.778 | 0.033 | 0.144 |",
        "captum-ext demo --quick",
        "![attribution maps](attributions.png)",
        "![metrics](metrics.png)",
        "![CASO vs CAFO](caso_vs_cafo.png)",
        "hit on 3 of 4 scored images; the others take the candidate closest to it",
        "converged on 5 of 6 images, with a certified relative error of at most 9.9e-05",
        "| CASO | 0.679 [0.6, 0.7] #1 |",  # the comparison's table
        # the takeaway, from the run's own numbers
        "median 0.222 on the 3 images with confidence 0-0.5",
        "keeps 10.0 % of the pixels (median; 0.4 %-20.0 %)",
        "leakage 0.432 vs 0.432 (difference -0.079 [-0.100, -0.050], significant)",
        "DiffROAR -0.046 [-0.100, 0.010], not significant",  # CASO against CAFO, oriented CASO-first
        "sparse CASO is not compared on pixel perturbation, not compared on DiffROAR, better on leakage",
        "pixel perturbation +0.012 [0.001, 0.022], significant",  # CASO against CAFO
        "CASO 12.3 ms",
        "Rank 1 (no method significantly better): pixel perturbation: " + ", ".join(demo.METHODS),
        "either sign convention",
        # a near-empty sparse map is explained
        "1 map(s) keep under 1 %: the search missed the window and kept the candidate closest to it",
    ):
        assert piece in text, piece
    assert text.index("## Takeaway") < text.index("## Data and model")
    for method in demo.METHODS:
        assert f"| {method} | 12.3 | 0.250 | 0.432 |" in text  # cost, zeros and leakage per method


# ------------------------------------------------------------------------------------ end to end


def _check_outputs(out, numbers):
    for name in ("attributions.png", "metrics.png", "caso_vs_cafo.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000, name
    report = (out / "report.md").read_text()
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["model"] == numbers["model"]
    acc = numbers["model"]["test_accuracy"]
    assert f"test accuracy {acc:.3f}" in report
    scored = set(demo.METHODS) | {"random"}
    scores = numbers["scores"]
    assert set(scores["methods"]) == scored  # every method shown is scored, with compare_attributions
    assert scores["metrics"] == ["pixel perturbation", "DiffROAR", "leakage"]
    assert scores["markdown"] in report
    for metric in scores["metrics"]:
        assert set(scores["mean"][metric]) == scored
        assert all(len(v) == scores["n_images"] for v in scores["per_image"][metric].values())
    assert report.index("## Takeaway") < report.index("## Data and model")
    for method in demo.METHODS:
        assert f"| {method} |" in report
    per = numbers["attributions"]["per_image"]
    n_show = numbers["config"]["n_show"]
    assert [r["confident"] for r in per[:n_show]] == [False] * (n_show - 1) + [True]
    for r in per:
        assert f"{r['cos_caso_cafo']:.3f}" in report


@pytest.mark.slow
def test_quick_demo_end_to_end_through_the_cli(tmp_path, capsys):
    out = tmp_path / "demo out"
    assert cli.main(["demo", "--quick", "--out", str(out), "--no-progress", "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    assert str(out.resolve()) in printed  # the folder is named at the end
    numbers = json.loads((out / "results.json").read_text())
    _check_outputs(out, numbers)
    assert numbers["run"]["command"].startswith("captum-ext demo --quick")
    assert numbers["model"]["test_accuracy"] > 0.5  # ten classes: chance is 0.1
    mean, ranks = numbers["scores"]["mean"], numbers["scores"]["ranks"]
    # dense maps beat a random ranking on both faithfulness metrics, significantly, on this data
    for name in ("Saliency", "CAFO", "CASO"):
        assert mean["pixel perturbation"][name] > mean["pixel perturbation"]["random"]
        assert mean["DiffROAR"][name] > mean["DiffROAR"]["random"] + 0.05
        assert ranks["DiffROAR"][name] < ranks["DiffROAR"]["random"]
    maps = numbers["attributions"]["methods"]
    assert set(maps) == set(demo.METHODS)
    assert maps["sparse CASO"]["zeros"] >= 0.75 - 1e-9  # the window's lower edge (the paper's)
    for r in numbers["attributions"]["per_image"]:
        assert r["caso_zeros"] >= 0.75 - 1e-9
    # the sparsity rule returns no near-empty map (the paper's window allowed a one-pixel map)
    assert numbers["attributions"]["sparse_caso_near_empty"] == 0
    assert numbers["attributions"]["sparse_caso_kept"]["min"] >= 0.05 - 1e-9
    cmp = numbers["caso_vs_cafo"]
    # the smaller c1 lets the Hessian term act: CASO moves further from CAFO than with c1 = 10
    assert cmp["min_cos"]["1"] < cmp["min_cos"]["10"] <= 1.0
    per = numbers["attributions"]["per_image"]
    assert per[0]["cos_caso_cafo"] == pytest.approx(cmp["min_cos"]["1"])  # the first row differs most
    assert per[-1]["confident"] and per[-1]["cos_caso_cafo"] > 0.99  # Theorem 4 at high confidence


@pytest.mark.slow
def test_same_seed_same_numbers(tmp_path):
    tiny = DemoConfig(
        mode="custom",
        n_train=200,
        epochs=2,
        n_explain=2,
        n_show=2,
        ig_steps=4,
        nt_samples=2,
        metric_nt_samples=1,
        n_metric_test=24,
        pixel_fractions=(0.5,),
        roar_fractions=(0.2,),
    )
    threads = torch.get_num_threads()
    runs = [
        run_demo(tmp_path / f"run{i}", seed=3, device="cpu", progress=False, verbose=False, config=tiny)
        for i in range(2)
    ]
    assert torch.get_num_threads() == threads  # the demo's one thread is restored afterwards
    assert runs[0].numbers["run"]["torch_threads"] == 1
    strip = ("timings", "run")
    a, b = ({k: v for k, v in r.numbers.items() if k not in strip} for r in runs)
    for numbers in (a, b):
        for m in numbers["attributions"]["methods"].values():
            for key in ("seconds", "cpu_seconds", "cpu_per_image"):
                m.pop(key)
    assert a == b  # same process, same seed, same thread count: bit-identical
    _check_outputs(runs[0].out_dir, runs[0].numbers)
