"""Training precision: which dtype ``auto`` means on a device, the autocast context for it, and
the fp32 attention patch that makes bf16 the faster choice on CPUs."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F


def fp32_attention(sdpa: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``sdpa`` run in fp32 outside autocast, its output cast back to the query's dtype."""

    def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
                  *args: Any, **kwargs: Any) -> torch.Tensor:
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.float()
        with torch.autocast(device_type="cpu", enabled=False):
            out = sdpa(query.float(), key.float(), value.float(), attn_mask, *args, **kwargs)
        return out.to(query.dtype)

    return attention


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 matmuls natively (and so faster than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # AVX512-BF16 or AMX
    return False


def effective_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 where the device has native bf16, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device for ``bf16``; nothing for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def cpu_attention_in_fp32(device: torch.device, precision: str) -> Iterator[None]:
    """With bf16 on a CPU, run attention in fp32: the fused CPU attention kernel's bf16 backward
    is 1.4x to 11x slower than its fp32 one at our shapes (benchmarks/attention_precision.py). timm's and
    open_clip's blocks call ``F.scaled_dot_product_attention``, swapped here for a whole step
    (forward and backward, so gradient checkpointing recomputes the same way)."""
    if precision != "bf16" or device.type != "cpu":
        yield
        return
    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = fp32_attention(sdpa)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa
