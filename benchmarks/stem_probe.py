"""Would zero-padding ResNet-18's 3-channel stem convolution to 4 or 8 channels pay? Times the frozen
stem's forward (batch 64, 224 px, bf16) per input layout and channel count, plus the max-pool after it.

Usage: python benchmarks/stem_probe.py
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

STEPS = 200


def time_ms(fn) -> float:
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(STEPS):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / STEPS


@torch.no_grad()
def main() -> None:
    x3 = torch.rand(64, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    w3 = torch.randn(64, 3, 7, 7, device="cuda", dtype=torch.bfloat16)
    for channels in (3, 4, 8):
        x = F.pad(x3, (0, 0, 0, 0, 0, channels - 3))
        w = F.pad(w3, (0, 0, 0, 0, 0, channels - 3))
        for layout in ("channels_last", "contiguous"):
            fmt = getattr(torch, f"{layout}_format" if layout == "contiguous" else layout)
            xl, wl = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
            conv = time_ms(lambda: F.conv2d(xl, wl, stride=2, padding=3))
            y = F.conv2d(xl, wl, stride=2, padding=3)
            pool = time_ms(lambda: F.max_pool2d(y, 3, 2, 1))
            print(json.dumps({"in_channels": channels, "layout": layout, "conv_ms": round(conv, 4),
                              "maxpool_ms": round(pool, 4)}), flush=True)


if __name__ == "__main__":
    main()
