"""Write the small Sphinx inventories (``objects.inv``) that link our API pages to Captum, PyTorch,
torchvision and NumPy, offline.

The docs build never downloads anything, so intersphinx reads these files instead of the projects'
own inventories. Each lists only the names our pages refer to, with the address of that name on
the project's public documentation site (relative to the base URL in ``docs/conf.py``). Regenerate
after adding a name: ``python docs/_inventories/make_inventories.py`` (the files are committed; a
test checks that they match this script).
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: project -> (display name, version, {object name: (domain:role, address relative to the base)})
INVENTORIES: dict[str, tuple[str, str, dict[str, tuple[str, str]]]] = {
    "captum": (
        "Captum",
        "0.9",
        {
            "captum.attr.Attribution": ("py:class", "base_classes.html#captum.attr.Attribution"),
            "captum.attr.GradientAttribution": (
                "py:class",
                "base_classes.html#captum.attr.GradientAttribution",
            ),
            "captum.attr.Saliency": ("py:class", "saliency.html#captum.attr.Saliency"),
            "captum.attr.IntegratedGradients": (
                "py:class",
                "integrated_gradients.html#captum.attr.IntegratedGradients",
            ),
            "captum.attr.InputXGradient": ("py:class", "input_x_gradient.html#captum.attr.InputXGradient"),
            "captum.attr.NoiseTunnel": ("py:class", "noise_tunnel.html#captum.attr.NoiseTunnel"),
            "captum.metrics.infidelity": ("py:function", "metrics.html#captum.metrics.infidelity"),
            "captum.metrics.sensitivity_max": ("py:function", "metrics.html#captum.metrics.sensitivity_max"),
            "captum.attr.visualization.visualize_image_attr": (
                "py:function",
                "utilities.html#captum.attr.visualization.visualize_image_attr",
            ),
        },
    ),
    "torch": (
        "PyTorch",
        "stable",
        {
            "torch.Tensor": ("py:class", "tensors.html#torch.Tensor"),
            "torch.device": ("py:class", "tensor_attributes.html#torch.device"),
            "torch.dtype": ("py:class", "tensor_attributes.html#torch.dtype"),
            "torch.Generator": ("py:class", "generated/torch.Generator.html#torch.Generator"),
            "torch.nn.Module": ("py:class", "generated/torch.nn.Module.html#torch.nn.Module"),
            "torch.nn.Sequential": ("py:class", "generated/torch.nn.Sequential.html#torch.nn.Sequential"),
            "torch.optim.Optimizer": ("py:class", "optim.html#torch.optim.Optimizer"),
            "torch.utils.data.Dataset": ("py:class", "data.html#torch.utils.data.Dataset"),
            "torch.utils.data.DataLoader": ("py:class", "data.html#torch.utils.data.DataLoader"),
        },
    ),
    "torchvision": (
        "torchvision",
        "stable",
        {
            "torchvision.models.resnet18": (
                "py:function",
                "models/generated/torchvision.models.resnet18.html#torchvision.models.resnet18",
            ),
        },
    ),
    "numpy": (
        "NumPy",
        "stable",
        {
            "numpy.ndarray": ("py:class", "reference/generated/numpy.ndarray.html#numpy.ndarray"),
            "numpy.percentile": ("py:function", "reference/generated/numpy.percentile.html#numpy.percentile"),
            "numpy.random.default_rng": (
                "py:function",
                "reference/random/generator.html#numpy.random.default_rng",
            ),
        },
    ),
}


def inventory_bytes(project: str, version: str, entries: dict[str, tuple[str, str]]) -> bytes:
    """One inventory in Sphinx's format 2: a plain header, then zlib-compressed entry lines."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    # name domain:role priority uri display-name ('-': the name itself)
    body = "".join(f"{name} {role} 1 {uri} -\n" for name, (role, uri) in sorted(entries.items()))
    return header.encode() + zlib.compress(body.encode(), 9)


def main() -> None:
    for key, (project, version, entries) in INVENTORIES.items():
        (HERE / f"{key}.inv").write_bytes(inventory_bytes(project, version, entries))


if __name__ == "__main__":
    main()
