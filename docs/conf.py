"""Sphinx configuration of the captum_ext API reference site.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (offline; notebooks are rendered with
their stored outputs, never executed). The build writes only into its output folder: the API pages
are generated while they are read (``docs/_ext/apidocs.py``), the tutorials are read through the
``docs/tutorials`` link to ``tutorials/``, and myst-nb's notebook outputs go under the doctree folder.

Links to Captum, PyTorch, torchvision and NumPy use intersphinx with the small committed inventories
in ``docs/_inventories/`` (``make_inventories.py`` writes them), so nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))
sys.dont_write_bytecode = True  # no __pycache__ under docs/_ext: the build writes only its output

from apidocs import tutorial_uses  # noqa: E402

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
    "sphinx.ext.intersphinx",
    "myst_nb",
    "apidocs",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "tutorials/README.md", "_inventories"]
html_theme = "alabaster"
html_title = f"captum_ext {release}"

# docstrings: Google style (Args / Returns / Examples), Attributes as fields so that dataclass fields
# are not described twice
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
# "lr, decay: ..." documents two parameters once (one entry), not the same text twice
napoleon_use_param = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

# the other projects' documentation, from the committed inventories (offline)
_INV = DOCS / "_inventories"
intersphinx_mapping = {
    "captum": ("https://captum.ai/api/", str(_INV / "captum.inv")),
    "torch": ("https://pytorch.org/docs/stable/", str(_INV / "torch.inv")),
    "torchvision": ("https://pytorch.org/vision/stable/", str(_INV / "torchvision.inv")),
    "numpy": ("https://numpy.org/doc/stable/", str(_INV / "numpy.inv")),
}

# notebooks: shown with their stored outputs, never executed by the docs build
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# which tutorial uses which public name (links both ways)
apidocs_uses = tutorial_uses()


def _outputs_inside_the_build(app) -> None:
    """myst-nb writes notebook images to ``<outdir>/../jupyter_execute``; keep them in the build."""
    cfg = app.env.mystnb_config
    inside = Path(app.doctreedir) / "jupyter_execute"
    app.env.mystnb_config = cfg.copy(output_folder=str(inside), execution_cache_path=str(inside / "cache"))


def setup(app) -> None:
    app.connect("builder-inited", _outputs_inside_the_build, priority=900)
