"""Tests of the demo (captum_ext.demo) and the ``captum-ext`` command line (captum_ext.cli)."""

from __future__ import annotations

import json

import pytest
import torch

from captum_ext import cli, demo
from captum_ext.demo import DemoConfig, format_report, resolve_device, run_demo, select_examples

PNG = b"\x89PNG\r\n\x1a\n"

# ---------------------------------------------------------------------------------- command line


def test_help_of_every_entry_point(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--seed", "--mode", "--quick", "--full", "--device", "--threads"):
        assert option in text
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        demo.main(["--help"])  # python -m captum_ext.demo --help
    assert exc.value.code == 0


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
    with pytest.raises(ValueError, match="mode"):
        DemoConfig.for_mode("huge")
    with pytest.raises(ValueError, match="n_show"):
        DemoConfig(n_explain=2, n_show=3).check()
    with pytest.raises(ValueError, match="nt_samples"):
        DemoConfig(nt_samples=0).check()
    with pytest.raises(ValueError, match="threads"):
        run_demo("unused", threads=0)


def test_select_examples_varies_labels_positions_and_confidence():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    top = torch.tensor([True, False] * 4)
    conf = torch.tensor([0.9, 0.99, 0.95, 0.3, 0.97, 0.98, 0.2, 0.96])
    idx = select_examples(labels, top, 4, torch.Generator().manual_seed(0), confidence=conf)
    assert len(set(idx.tolist())) == 4
    assert len(set(labels[idx].tolist())) == 4  # distinct labels while there are unseen ones
    assert int(idx[1]) == 6  # the least confident example
    assert bool(top[idx[0]]) and not bool(top[idx[2]])  # picks 0 and 2: top, then bottom
    again = select_examples(labels, top, 4, torch.Generator().manual_seed(0), confidence=conf)
    assert torch.equal(idx, again)
    every = select_examples(labels, top, 8, torch.Generator().manual_seed(1))
    assert sorted(every.tolist()) == list(range(8))
    with pytest.raises(ValueError):
        select_examples(labels, top, 9, torch.Generator())


def _fake_numbers() -> dict:
    return {
        "config": {
            "mode": "quick",
            "epochs": 2,
            "n_explain": 1,
            "n_show": 1,
            "nt_samples": 3,
            "nt_stdev": 0.15,
        },
        "data": {"classes": [0, 1], "n_train": 10, "n_test": 4},
        "model": {"test_accuracy": 0.8125, "train_accuracy": 0.9, "parameters": 7},
        "attributions": {
            "methods": {"Saliency": {"seconds": 0.25, "zeros": 0.0, "leakage": 0.4321}},
            "per_image": [
                {
                    "digit": 1,
                    "signal": "top",
                    "prediction": 1,
                    "confidence": 0.97,
                    "hessian_rank": 1,
                    "top_eigenvalue": 0.5,
                    "caso_lambda1": 1e-3,
                    "caso_zeros": 0.8,
                    "cos_caso_cafo": 0.9999,
                }
            ],
        },
        "pixel_perturbation": {
            "n_images": 4,
            "fractions": [0.5],
            "baseline_accuracy": 0.75,
            "accuracy": {"Saliency": [0.6789], "random": [0.1234]},
        },
        "diff_roar": {
            "n_images": 4,
            "fractions": [0.1],
            "methods": {"Saliency": {"diff": [0.5556], "top": [0.75], "bottom": [0.25]}},
        },
        "timings": {"training": 1.25},
        "run": {
            "command": "captum-ext demo --quick",
            "seed": 0,
            "device": "cpu",
            "torch_threads": 1,
            "torch": "x",
            "captum": "y",
            "platform": "z",
            "seconds": 3.0,
        },
        "files": {"figure": "attributions.png", "metrics_figure": "metrics.png"},
    }


def test_report_prints_every_number():
    text = format_report(_fake_numbers())
    for piece in (
        "0.812",
        "0.432",
        "0.679",
        "0.123",
        "0.556 (0.750 / 0.250)",
        "1.0e-03",
        "1.000",
        "captum-ext demo --quick",
        "![attribution maps](attributions.png)",
        "![metrics](metrics.png)",
        "| 50% | 0.679 | 0.123 |",
    ):
        assert piece in text, piece


# ------------------------------------------------------------------------------------ end to end


def _check_outputs(out, numbers):
    for name in ("attributions.png", "metrics.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000, name
    report = (out / "report.md").read_text()
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["model"] == numbers["model"]
    acc = numbers["model"]["test_accuracy"]
    assert f"test accuracy {acc:.3f}" in report
    for values in numbers["pixel_perturbation"]["accuracy"].values():
        assert all(f"{v:.3f}" in report for v in values)
    for res in numbers["diff_roar"]["methods"].values():
        for d, t, b in zip(res["diff"], res["top"], res["bottom"], strict=True):
            assert f"{d:.3f} ({t:.3f} / {b:.3f})" in report
    for method in demo.METHODS:
        assert f"| {method} |" in report


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
    pix, roar = numbers["pixel_perturbation"], numbers["diff_roar"]["methods"]
    # real maps beat a random ranking on both metrics by a wide margin on this data
    for name in demo.METRIC_METHODS:
        assert sum(pix["accuracy"][name]) > sum(pix["accuracy"]["random"])
        assert min(roar[name]["diff"]) > max(roar["random"]["diff"]) + 0.05
    maps = numbers["attributions"]["methods"]
    assert set(maps) == set(demo.METHODS)
    assert maps["CASO"]["zeros"] >= 0.75 - 1e-9  # the sparsity window 0.75-1 of the paper


@pytest.mark.slow
def test_same_seed_same_numbers(tmp_path):
    tiny = DemoConfig(
        mode="custom",
        n_train=200,
        epochs=2,
        n_explain=2,
        n_show=1,
        ig_steps=4,
        nt_samples=2,
        n_metric_test=40,
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
    for m in a["attributions"]["methods"].values():
        m.pop("seconds")
    for m in b["attributions"]["methods"].values():
        m.pop("seconds")
    assert a == b
    _check_outputs(runs[0].out_dir, runs[0].numbers)
