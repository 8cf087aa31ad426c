"""Host-to-device copies that never make the host wait for the device.

A plain ``tensor.to("cuda")`` from ordinary (pageable) host memory is a blocking copy: PyTorch
waits for the whole stream to drain before it returns, which stalls the training loop once per
copy. ``to_device`` stages the data in pinned memory and copies it with ``non_blocking=True``, so
the host keeps queueing work. On the CPU it returns the tensor unchanged; on other devices it uses
an asynchronous copy without pinning.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device`` without a host-device synchronisation (same values, same dtype)."""
    device = torch.device(device)
    if tensor.device == device or (device.type == "cpu" and tensor.device.type == "cpu"):
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        # The caching host allocator keeps the pinned block alive until the copy has completed.
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
