"""Forward + backward time of torch's scaled_dot_product_attention on the CPU at langmim's
shapes: the fused kernel in fp32 and in bf16, and the math path in bf16. This is why langmim
runs attention in fp32 inside bf16 steps on a CPU (``cpu_attention_in_fp32``).

    python benchmarks/attention_precision.py

Prints one JSON line per shape and appends it to benchmarks/results/attention_precision.jsonl.
"""
from __future__ import annotations

import json
import time
from datetime import date

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from results_log import append_result

# name: (batch, heads, tokens, head width, causal text mask)
SHAPES = {
    "vit_s16 encoder, 197 tokens": (16, 6, 197, 64, False),
    "vit_s16 encoder, masked pass (50 tokens)": (16, 6, 50, 64, False),
    "MAE decoder, 512 wide": (16, 16, 197, 32, False),
    "text tower, 77 tokens, causal mask": (16, 8, 77, 64, True),
    "demo encoder, 17 tokens": (128, 4, 17, 32, False),
}
VARIANTS = {"fused_fp32": (torch.float32, SDPBackend.FLASH_ATTENTION), "fused_bf16": (torch.bfloat16, SDPBackend.FLASH_ATTENTION),
            "math_bf16": (torch.bfloat16, SDPBackend.MATH)}


def milliseconds(shape: tuple, dtype: torch.dtype, backend: SDPBackend, repeats: int = 10) -> float:
    batch, heads, tokens, width, causal = shape
    q, k, v = (torch.randn(batch, heads, tokens, width, dtype=dtype, requires_grad=True) for _ in range(3))
    mask = torch.full((tokens, tokens), float("-inf")).triu(1).to(dtype) if causal else None
    with sdpa_kernel([backend]):
        for i in range(repeats + 3):
            if i == 3:
                start = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()
    return 1000 * (time.perf_counter() - start) / repeats


def main() -> None:
    for name, shape in SHAPES.items():
        times = {variant: round(milliseconds(shape, *spec), 2) for variant, spec in VARIANTS.items()}
        record = {"date": date.today().isoformat(), "shape": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
                  **{f"{v}_ms": t for v, t in times.items()}, "fused_bf16_over_fp32": round(times["fused_bf16"] / times["fused_fp32"], 2)}
        append_result("attention_precision", record)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
