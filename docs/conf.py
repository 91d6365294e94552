"""Sphinx configuration of the captum_ext API reference site.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (offline; notebooks are rendered with
their stored outputs, never executed).

The API pages are generated here from each subpackage's ``__all__`` (so a name added to ``__all__``
appears without editing the docs), and the tutorials and ``benchmarks/REPRODUCTIONS.md``, which live
outside ``docs/``, are copied into ``docs/_generated/`` (git-ignored) before the build reads them.
"""

from __future__ import annotations

import importlib
import inspect
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"
sys.path.insert(0, str(ROOT))

import captum_ext  # noqa: E402

project = "captum_ext"
author = "captum_ext developers"
copyright = "2026, captum_ext developers"  # noqa: A001 - Sphinx's name
release = version = captum_ext.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
html_theme = "alabaster"
html_title = f"captum_ext {release}"

# docstrings: Google style (Args / Returns / Examples), Attributes as fields so that dataclass fields
# are not described twice
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

# notebooks: shown with their stored outputs, never executed by the docs build
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# The API pages, one per subpackage, in this order.
SUBPACKAGES = [
    ("captum_ext.attr", "Attribution methods"),
    ("captum_ext.manipulation", "Gradient manipulation"),
    ("captum_ext.metrics", "Metrics"),
    ("captum_ext.regularizers", "Regularizers"),
    ("captum_ext.datasets", "Data sets"),
    ("captum_ext.training", "Training loop"),
    ("captum_ext.visualization", "Visualization"),
]


def _directive(module: str, name: str) -> str:
    obj = getattr(importlib.import_module(module), name)
    if inspect.isclass(obj):
        return f".. autoclass:: {module}.{name}\n   :members:\n   :show-inheritance:\n"
    if callable(obj):
        return f".. autofunction:: {module}.{name}\n"
    return f".. autodata:: {module}.{name}\n   :annotation:\n"


def _write_if_changed(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _api_pages() -> None:
    owner: dict[int, str] = {}
    for module, title in SUBPACKAGES:
        mod = importlib.import_module(module)
        lines = [title, "=" * len(title), "", f".. automodule:: {module}", "   :no-members:", ""]
        for name in mod.__all__:
            owner.setdefault(id(getattr(mod, name)), module)
            lines += [_directive(module, name), ""]
        _write_if_changed(GENERATED / "api" / f"{module}.rst", "\n".join(lines))
    # the top level re-exports names documented on the subpackage pages: link to them
    lines = ["Top level: ``captum_ext``", "=" * 26, "", ".. automodule:: captum_ext", "   :no-members:", ""]
    lines += [
        "The names importable from ``captum_ext`` itself, each documented on its subpackage's page:",
        "",
    ]
    for name in captum_ext.__all__:
        obj = getattr(captum_ext, name)
        module = owner.get(id(obj))
        if module is None:
            lines += [f"* ``captum_ext.{name}`` = ``{obj!r}``"]
        else:
            role = "class" if inspect.isclass(obj) else "func"
            lines += [f"* :{role}:`captum_ext.{name} <{module}.{name}>`"]
    pages = "\n".join(f"   {module}" for module, _ in SUBPACKAGES)
    lines += ["", ".. toctree::", "   :maxdepth: 1", "", pages, ""]
    _write_if_changed(GENERATED / "api" / "index.rst", "\n".join(lines))


def _copy_if_changed(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists() or dst.read_bytes() != src.read_bytes():
        shutil.copyfile(src, dst)


def _external_pages() -> None:
    for nb in sorted((ROOT / "tutorials").glob("*.ipynb")):
        _copy_if_changed(nb, GENERATED / "tutorials" / nb.name)
    _copy_if_changed(ROOT / "benchmarks" / "REPRODUCTIONS.md", GENERATED / "reproductions.md")
    _copy_if_changed(ROOT / "CHANGELOG.md", GENERATED / "changelog.md")


_api_pages()
_external_pages()
