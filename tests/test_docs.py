"""The API reference site builds without a warning and documents every public name with its example.

One Sphinx build (``python -m sphinx -W --keep-going -b html docs <tmp>``, the README's docs command
into a temporary folder) in a subprocess, shared by the checks below.
"""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = [
    "captum_ext.attr",
    "captum_ext.manipulation",
    "captum_ext.metrics",
    "captum_ext.compare",
    "captum_ext.compare_metrics",
    "captum_ext.compare_result",
    "captum_ext.compare_stats",
    "captum_ext.regularizers",
    "captum_ext.datasets",
    "captum_ext.training",
    "captum_ext.visualization",
    "captum_ext.demo",
]
# the page each module is documented on (the compare modules share one, the metrics have several)
PAGE = {m: m for m in SUBPACKAGES} | {m: "captum_ext.compare" for m in SUBPACKAGES if "compare" in m}

pytestmark = pytest.mark.slow


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    parent = tmp_path_factory.mktemp("docs_build")
    out = parent / "html"
    docs_before = _files(ROOT / "docs")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    # the build writes only into its output folder: nothing beside it, nothing in docs/
    assert sorted(p.name for p in parent.iterdir()) == ["html"]
    assert _files(ROOT / "docs") == docs_before
    return out


def _page(site: Path, module: str) -> str:
    """The HTML of the page(s) documenting ``module`` (the metrics are split into several)."""
    pages = sorted((site / "api").glob(f"{PAGE[module]}*.html"))
    assert pages, f"no API page for {module}"
    return "\n".join(p.read_text(encoding="utf-8") for p in pages)


@pytest.mark.parametrize("module", SUBPACKAGES)
def test_every_public_name_is_documented_with_its_example(site, module):
    html = _page(site, module)
    names = list(importlib.import_module(module).__all__)
    starts = {}
    for name in names:
        anchor = f'id="{module}.{name}"'
        assert anchor in html, f"{module}.{name} (in __all__) is missing from the API page"
        starts[name] = html.index(anchor)
    order = sorted(names, key=starts.__getitem__)
    for i, name in enumerate(order):
        obj = getattr(importlib.import_module(module), name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)) or ">>>" not in (inspect.getdoc(obj) or ""):
            continue
        end = starts[order[i + 1]] if i + 1 < len(order) else len(html)
        assert "doctest" in html[starts[name] : end], f"the example of {module}.{name} is not rendered"


def test_top_level_names_link_to_their_pages(site):
    import captum_ext

    html = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in captum_ext.__all__:
        assert re.search(rf">captum_ext\.{re.escape(name)}<", html), f"captum_ext.{name} is not listed"


def test_tutorials_and_reproductions_are_rendered(site):
    notebooks = sorted(p.stem for p in (ROOT / "tutorials").glob("*.ipynb"))
    assert notebooks
    for stem in notebooks:
        assert (site / "tutorials" / f"{stem}.html").exists(), stem
    assert (site / "reproductions.html").exists()
    assert (site / "design.html").exists()


def _text(html: str) -> str:
    import html as html_lib

    return html_lib.unescape(re.sub(r"<[^>]+>", "", html))


def test_links_into_captum_pytorch_and_numpy_docs(site):
    attr = (site / "api" / "captum_ext.attr.html").read_text(encoding="utf-8")
    assert 'href="https://captum.ai/api/base_classes.html#captum.attr.GradientAttribution"' in attr
    assert 'href="https://pytorch.org/docs/stable/tensors.html#torch.Tensor"' in attr
    compare = (site / "api" / "captum_ext.compare.html").read_text(encoding="utf-8")
    assert 'href="https://captum.ai/api/metrics.html#captum.metrics.infidelity"' in compare
    numpy_docs = "https://numpy.org/doc/stable/reference/generated/numpy.ndarray.html#numpy.ndarray"
    assert f'href="{numpy_docs}"' in compare


def test_public_bases_constants_and_defaults_are_shown(site):
    attr = _text((site / "api" / "captum_ext.attr.html").read_text(encoding="utf-8"))
    assert "Bases: captum.attr.GradientAttribution" in attr and "_ContextAwareAttribution" not in attr
    assert "rank_tol: float = 0.001" in attr and "DEFAULT_RANK_TOL" not in attr
    assert attr.count("initial step and backtracking factor") == 1  # "lr, decay" documented once
    helpers = _text((site / "api" / "captum_ext.metrics-helpers.html").read_text(encoding="utf-8"))
    assert "DIFF_ROAR_FRACTIONS = (0.05, 0.1, 0.2" in helpers and "Unmasking levels" in helpers
    assert "Built-in immutable sequence" not in helpers  # not the tuple builtin's docstring


def test_metrics_reference_is_grouped(site):
    import captum_ext.metrics as m

    groups = {
        "faithfulness": ["pixel_perturbation", "diff_roar", "aopc"],
        "localisation": ["feature_leakage"],
        "sanity": ["model_randomization", "data_randomization"],
        "robustness": ["attribution_attack", "stability"],
        "density": ["density_ratio_curve", "gan_test"],
        "results": ["DiffROARResult", "PixelPerturbationResult", "MetricResult"],
        "helpers": ["unmask", "count_for_fraction", "rank_average", "DIFF_ROAR_FRACTIONS"],
    }
    for group, names in groups.items():
        html = (site / "api" / f"captum_ext.metrics-{group}.html").read_text(encoding="utf-8")
        for name in names:
            assert f'id="captum_ext.metrics.{name}"' in html, (group, name)
    index = (site / "api" / "captum_ext.metrics.html").read_text(encoding="utf-8")
    assert 'id="captum_ext.metrics.diff_roar"' not in index  # the index page only links to the groups
    assert all(hasattr(m, n) for names in groups.values() for n in names)


def test_tutorials_and_api_link_to_each_other(site):
    tut = (site / "tutorials" / "01_caso_cafo.html").read_text(encoding="utf-8")
    assert "API used here" in tut and 'href="../api/captum_ext.attr.html#captum_ext.attr.CASO"' in tut
    attr = (site / "api" / "captum_ext.attr.html").read_text(encoding="utf-8")
    assert 'href="../tutorials/01_caso_cafo.html"' in attr


def test_demo_page_shows_the_command_line(site):
    text = _text((site / "demo.html").read_text(encoding="utf-8"))
    assert "--quick" in text and "--seed" in text and "captum-ext" in text


def test_reproductions_page_shows_the_figures(site):
    html = (site / "reproductions.html").read_text(encoding="utf-8")
    pngs = re.findall(r'<img[^>]+src="(_images/[^"]+\.png)"', html)
    assert len(pngs) >= 5
    assert all((site / p).exists() for p in pngs)


def test_inventories_match_their_generator():
    import zlib

    sys.path.insert(0, str(ROOT / "docs" / "_inventories"))
    try:
        from make_inventories import INVENTORIES
    finally:
        sys.path.pop(0)
    for key, (_, _, entries) in INVENTORIES.items():
        data = (ROOT / "docs" / "_inventories" / f"{key}.inv").read_bytes()
        body = zlib.decompress(data.split(b"zlib.\n", 1)[1]).decode()
        expected = "".join(f"{n} {r} 1 {u} -\n" for n, (r, u) in sorted(entries.items()))
        assert body == expected, f"{key}.inv is stale: python docs/_inventories/make_inventories.py"


def _public_objects():
    seen = set()
    for module in ["captum_ext", *SUBPACKAGES]:
        mod = importlib.import_module(module)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and id(obj) not in seen:
                seen.add(id(obj))
                yield f"{module}.{name}", obj


def test_every_public_class_and_function_has_an_example():
    missing = {name for name, obj in _public_objects() if ">>>" not in (inspect.getdoc(obj) or "")}
    assert not missing, f"public names without a docstring example: {sorted(missing)}"
