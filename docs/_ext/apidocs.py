"""The API pages of the captum_ext site, generated while Sphinx reads them (nothing is written into
``docs/``): directives that document a module's ``__all__`` (or one group of the metrics), the
top-level name list, the ``captum-ext`` command's help, and hooks that show public bases, constants
with their values, and links between the tutorials and the API.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.errors import ExtensionError
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "tutorials"

#: Pages of the API reference, in order: (page name under api/, title, modules documented on it).
API_PAGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("captum_ext.attr", "Attribution methods", ("captum_ext.attr",)),
    ("captum_ext.manipulation", "Gradient manipulation", ("captum_ext.manipulation",)),
    ("captum_ext.metrics", "Metrics", ("captum_ext.metrics",)),
    (
        "captum_ext.compare",
        "Comparing methods",
        tuple(f"captum_ext.{m}" for m in ("compare", "compare_metrics", "compare_result", "compare_stats")),
    ),
    ("captum_ext.regularizers", "Regularizers", ("captum_ext.regularizers",)),
    ("captum_ext.datasets", "Data sets", ("captum_ext.datasets",)),
    ("captum_ext.training", "Training loop", ("captum_ext.training",)),
    ("captum_ext.visualization", "Visualization", ("captum_ext.visualization",)),
    ("captum_ext.demo", "Demo (Python API)", ("captum_ext.demo",)),
)

#: The metrics reference, one page per group (results and "other" are found automatically).
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "faithfulness": (
        "pixel_perturbation",
        "diff_roar",
        "diff_roar_without_retraining",
        "aopc",
        "relative_fidelity_drop",
    ),
    "localisation": ("feature_leakage",),
    "sanity": ("model_randomization", "data_randomization"),
    "robustness": ("attribution_attack", "stability", "topk_intersection"),
    "density": ("density_ratio_curve", "class_conditional_samples", "gan_test"),
    "helpers": (
        "ExecutionOptions",
        "DIFF_ROAR_FRACTIONS",
        "count_for_fraction",
        "unmask",
        "rank_average",
        "normalize_maps",
        "saliency_map",
        "spearman",
        "ssim",
    ),
}


def _all(module: str) -> list[str]:
    return list(importlib.import_module(module).__all__)


def metric_group(name: str) -> str:
    """The page of ``captum_ext.metrics.<name>``: a group, ``"results"`` or ``"other"``."""
    for group, names in METRIC_GROUPS.items():
        if name in names:
            return group
    from captum_ext.metrics import MetricResult

    obj = getattr(importlib.import_module("captum_ext.metrics"), name)
    if inspect.isclass(obj) and issubclass(obj, MetricResult):
        return "results"
    return "other"


def check_metric_groups() -> None:
    """Every name of the groups must still be public (a renamed metric must be regrouped)."""
    public = set(_all("captum_ext.metrics"))
    stale = sorted(n for names in METRIC_GROUPS.values() for n in names if n not in public)
    if stale:
        raise ExtensionError(f"docs/_ext/apidocs.py METRIC_GROUPS names no public metric: {stale}")


# ------------------------------------------------------------------------------------------------
# tutorials <-> API


def _code_of(notebook: Path) -> str:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def tutorial_uses() -> dict[str, list[str]]:
    """Public object (``module.name``, its documented place) -> stems of the tutorials that use it."""
    owners = documented_owners()
    uses: dict[str, list[str]] = {}
    for nb in sorted(TUTORIALS.glob("*.ipynb")):
        code = _code_of(nb)
        if "captum_ext" not in code:
            continue
        for qual in sorted(set(owners.values())):
            name = qual.rsplit(".", 1)[1]
            if len(name) > 2 and re.search(rf"(?<![\w.]){re.escape(name)}\b", code):
                uses.setdefault(qual, []).append(nb.stem)
    return uses


def documented_owners() -> dict[int, str]:
    """``id(obj)`` -> ``module.name`` where the object is documented (the first page that lists it)."""
    owners: dict[int, str] = {}
    for _, _, modules in API_PAGES:
        for module in modules:
            mod = importlib.import_module(module)
            for name in mod.__all__:
                obj = getattr(mod, name)
                if inspect.isclass(obj) or inspect.isfunction(obj):
                    owners.setdefault(id(obj), f"{module}.{name}")
    return owners


# ------------------------------------------------------------------------------------------------
# the directives


def _constant_doc(package: str, name: str, value: Any) -> list[str]:
    """The ``#:`` comment above the constant in the submodule that defines it."""
    mod = importlib.import_module(package)
    candidates = [package]
    if hasattr(mod, "__path__"):
        candidates += [m.name for m in pkgutil.iter_modules(mod.__path__, package + ".")]
    for sub in candidates:
        m = importlib.import_module(sub)
        if getattr(m, name, None) is value:
            docs = ModuleAnalyzer.for_module(sub).find_attr_docs().get(("", name))
            if docs:
                return [line for line in docs if line.strip()]
    return []


def api_lines(module: str, names: Iterable[str], uses: dict[str, list[str]]) -> list[str]:
    """reST for ``names`` of ``module``: autodoc for classes and functions, ``py:data`` with the
    value for constants, and the tutorials that use each."""
    mod = importlib.import_module(module)
    lines: list[str] = []
    for name in names:
        obj = getattr(mod, name)
        qual = f"{module}.{name}"
        if inspect.isclass(obj):
            lines += [f".. autoclass:: {qual}", "   :members:", "   :show-inheritance:", ""]
        elif callable(obj):
            lines += [f".. autofunction:: {qual}", ""]
        else:
            lines += [f".. py:data:: {name}", f"   :module: {module}", f"   :value: {obj!r}", ""]
            lines += [f"   {line}" for line in _constant_doc(module, name, obj)] + [""]
        stems = uses.get(qual, [])
        if stems:
            links = ", ".join(f":doc:`{s} </tutorials/{s}>`" for s in stems)
            lines += [f"   Used in the tutorials: {links}.", ""]
    return lines


class ApiNames(SphinxDirective):
    """``.. api-names:: module`` documents the module's ``__all__`` (``:group:`` for the metrics)."""

    required_arguments = 1
    option_spec = {"group": directives.unchanged, "automodule": directives.flag}

    def run(self) -> list[nodes.Node]:
        module = self.arguments[0]
        names = _all(module)
        group = self.options.get("group")
        if group is not None:
            check_metric_groups()
            names = [n for n in names if metric_group(n) == group]
        lines = [".. rubric:: Other metrics", ""] if group == "other" and names else []
        if "automodule" in self.options:
            lines += [f".. automodule:: {module}", "   :no-members:", ""]
        lines += api_lines(module, names, self.env.app.config.apidocs_uses)
        node = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source=f"<api-names {module}>"), node)
        return node.children


class ApiTopLevel(SphinxDirective):
    """``.. api-toplevel::`` lists ``captum_ext.__all__``, each linked to its documented place."""

    def run(self) -> list[nodes.Node]:
        import captum_ext

        owners = documented_owners()
        lines = []
        for name in captum_ext.__all__:
            obj = getattr(captum_ext, name)
            qual = owners.get(id(obj))
            if qual is None:
                lines.append(f"* ``captum_ext.{name}`` = ``{obj!r}``")
            else:
                role = "class" if inspect.isclass(obj) else "func"
                lines.append(f"* :py:{role}:`captum_ext.{name} <{qual}>`")
        node = nodes.container()
        self.state.nested_parse(StringList(lines + [""], source="<api-toplevel>"), 0, node)
        return node.children


class CliHelp(SphinxDirective):
    """``.. cli-help:: demo`` shows ``captum-ext [sub] --help`` as argparse prints it."""

    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        from captum_ext.cli import build_parser

        parser = build_parser()
        if self.arguments:
            sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
            parser = sub.choices[self.arguments[0]]
        text = parser.format_help()
        return [nodes.literal_block(text, text, language="text")]


# ------------------------------------------------------------------------------------------------
# hooks


def _public_alias(cls: type) -> str | None:
    """``captum.attr.GradientAttribution`` for a class defined in a private module of Captum,
    PyTorch or captum_ext, if a public package exports it."""
    name = cls.__name__
    places = ["captum.attr", "captum.metrics", "torch.nn", "torch.utils.data", "torch"]
    places += [m for _, _, modules in API_PAGES for m in modules]
    for place in places:
        try:
            mod = importlib.import_module(place)
        except ImportError:  # pragma: no cover
            continue
        if getattr(mod, name, None) is cls:
            return f"{place}.{name}"
    return None


def _public_bases_of(cls: type) -> list[Any]:
    if cls.__name__.startswith("_"):  # a private base: show the public classes it stands on
        return [b for base in cls.__bases__ for b in _public_bases_of(base)]
    alias = _public_alias(cls)
    return [f":py:class:`{alias}`"] if alias else [cls]


def public_bases(app: Any, name: str, obj: Any, options: Any, bases: list[Any]) -> None:
    """autodoc-process-bases: private bases replaced by their public ancestors, public names."""
    out: list[Any] = []
    for base in bases:
        for b in _public_bases_of(base) if inspect.isclass(base) else [base]:
            if b not in out:
                out.append(b)
    bases[:] = out


_CONSTANT = re.compile(r"(?<=[=(,\s])([A-Z][A-Z0-9_]{2,})(?=[,)\s]|$)")


def constant_defaults(
    app: Any, what: str, name: str, obj: Any, options: Any, signature: str | None, ret: Any
) -> tuple[str, Any] | None:
    """autodoc-process-signature: a default written as a module constant shows its value."""
    if not signature:
        return None
    target = obj.__init__ if inspect.isclass(obj) else obj
    module = inspect.getmodule(inspect.unwrap(target)) or inspect.getmodule(obj)
    scope = vars(module) if module else {}

    def value(m: re.Match[str]) -> str:
        v = scope.get(m.group(1))
        if isinstance(v, (int, float, str, tuple)) and not isinstance(v, bool):
            return repr(v)
        return m.group(1)

    return _CONSTANT.sub(value, signature), ret


def tutorial_api_links(app: Any, docname: str, source: list[str]) -> None:
    """source-read: each tutorial notebook ends with links to the API it uses."""
    if not docname.startswith("tutorials/"):
        return
    stem = docname.split("/", 1)[1]
    nb = json.loads(source[0])
    for cell in nb["cells"]:  # links between notebooks become document links of the site
        if cell["cell_type"] == "markdown":
            cell["source"] = _TUTORIAL_LINK.sub(_doc_link, "".join(cell["source"]))
    used = [qual for qual, stems in app.config.apidocs_uses.items() if stem in stems]
    if used:
        links = ", ".join(f"{{py:obj}}`~{q}`" for q in used)
        text = f"**API used here:** {links}\n"
        nb["cells"].append({"cell_type": "markdown", "id": "api-used-here", "metadata": {}, "source": text})
    source[0] = json.dumps(nb)


_TUTORIAL_LINK = re.compile(r"\[([^\]]+)\]\((\d\d_\w+)\.ipynb(#[\w-]+)?\)")


def _doc_link(m: re.Match[str]) -> str:
    text = m.group(1).replace("`", "")
    return f"{{doc}}`{text} </tutorials/{m.group(2)}>`"


def setup(app: Any) -> dict[str, Any]:
    app.add_config_value("apidocs_uses", {}, "env")
    app.add_directive("api-names", ApiNames)
    app.add_directive("api-toplevel", ApiTopLevel)
    app.add_directive("cli-help", CliHelp)
    app.connect("autodoc-process-bases", public_bases)
    app.connect("autodoc-process-signature", constant_defaults)
    app.connect("source-read", tutorial_api_links)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
