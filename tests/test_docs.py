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
    "captum_ext.regularizers",
    "captum_ext.datasets",
    "captum_ext.training",
    "captum_ext.visualization",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs_html")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return out


def _page(site: Path, module: str) -> str:
    return (site / "_generated" / "api" / f"{module}.html").read_text(encoding="utf-8")


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

    html = (site / "_generated" / "api" / "index.html").read_text(encoding="utf-8")
    for name in captum_ext.__all__:
        assert re.search(rf">captum_ext\.{re.escape(name)}<", html), f"captum_ext.{name} is not listed"


def test_tutorials_and_reproductions_are_rendered(site):
    notebooks = sorted(p.stem for p in (ROOT / "tutorials").glob("*.ipynb"))
    assert notebooks
    for stem in notebooks:
        assert (site / "_generated" / "tutorials" / f"{stem}.html").exists(), stem
    assert (site / "_generated" / "reproductions.html").exists()
    assert (site / "design.html").exists()


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
