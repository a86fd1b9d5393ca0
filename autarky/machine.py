"""What this machine offers a stage: the cores it may use and the device it should compute on."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def available_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def best_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    import torch  # here, not at the top: the CLI and curation workers start without loading torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
