"""What `keep_freed_memory` (nerfstudio_mobile.common.compat) buys: the three cost rates of `ns-mobile-demo`'s run
(teacher training and rendering per ray, student training per pixel) with glibc's mmap threshold at 32 MB (the
most its dynamic default ever reaches) and at 1 GiB (what every ns-* command sets when our plugins load),
interleaved in one process so the machine's noise hits both.

    python benchmarks/malloc_reuse.py      # writes benchmarks/results/malloc_reuse.{json,md}
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
from common import machine, markdown_table, write_results

from nerfstudio_mobile.common.compat import KEPT_FREED_BYTES, keep_freed_memory
from nerfstudio_mobile.demo.demo import Demo
from nerfstudio_mobile.demo.run_estimate import CostRates

SETTINGS = {"glibc default (32 MB)": 32 << 20, "ours (1 GiB)": KEPT_FREED_BYTES}
ROUNDS = 3


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        demo = Demo(output_dir=root)
        plan = demo.plan(demo.teacher_config(demo.scene_data(root), root))
        rates: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
        for _ in range(ROUNDS):
            for name, threshold in SETTINGS.items():
                keep_freed_memory(threshold)
                rates[name].append(asdict(CostRates.measure(plan)))
    median = {name: {k: float(np.median([r[k] for r in runs])) for k in runs[0]} for name, runs in rates.items()}
    base, ours = (median[name] for name in SETTINGS)
    result = {
        "machine": machine(),
        "frame": plan.frame,
        "median_rates": median,
        "speedup": {k: base[k] / ours[k] for k in base},
    }
    rows = [
        f"| {k.replace('_', ' ')} | {base[k] * 1e6:.3g} µs | {ours[k] * 1e6:.3g} µs | {result['speedup'][k]:.2f}× |"
        for k in base
    ]
    table = markdown_table(
        f"glibc memory reuse ({result['machine']}, the demo's networks, median of {ROUNDS} interleaved rounds)",
        ["rate", "mmap threshold 32 MB", "1 GiB (ours)", "speed-up"],
        rows,
    )
    write_results("malloc_reuse", result, table)


if __name__ == "__main__":
    main()
