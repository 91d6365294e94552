"""Machine description written into every benchmark's JSON."""

from __future__ import annotations

import os
import platform

import torch


def describe_machine(device: torch.device | str = "cpu") -> dict[str, object]:
    """Platform, CPU count, torch version and device (GPU name when on CUDA)."""
    device = torch.device(device)
    info: dict[str, object] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
