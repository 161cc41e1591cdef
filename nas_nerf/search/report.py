"""What a search leaves in its output directory, next to the trial runs:

    architectures/{s,xs,xxs}.json   each tier's cells, for `ns-train nas-nerf --pipeline.model.architecture-file`
    table.md, table.csv             the paper's Table 1 for this scene: vanilla NeRF and the three tiers
    pareto.png                      SSIM against FLOPs of every evaluated architecture, tiers marked
    summary.json                    all of the above as numbers, and every evaluated architecture

Params and FLOPs are analytic (paper convention, `nas_nerf.complexity`). Render times are measured here, one
eval frame per architecture at the deployed 64 + 128 samples, interleaved and as a ratio against vanilla NeRF
cells timed in the same run; weights do not change the cost, so untrained models of the same cells are timed.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import warnings
from dataclasses import asdict
from functools import partial
from pathlib import Path

from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from nas_nerf.cell import FieldCellConfig, save_architecture
from nas_nerf.model import NASNeRFModelConfig
from nas_nerf.search.config import SearchConfig
from nas_nerf.search.records import Record, SearchResult
from nas_nerf.search.space import Architecture
from nas_nerf.search.targets import TIERS
from nerfstudio_mobile.common.compat import default_device_type
from nerfstudio_mobile.common.files import atomic_path, atomic_write
from nerfstudio_mobile.common.timing import round_robin_seconds
from nerfstudio_mobile.data.formats import dataparser_for

VANILLA = Architecture(FieldCellConfig(), FieldCellConfig())
TIER_COLOURS = {"s": "tab:green", "xs": "tab:orange", "xxs": "tab:red"}


def write_report(result: SearchResult, config: SearchConfig, console: Console, timing_repeats: int) -> dict:
    """Write every output; return the summary (also in summary.json)."""
    out = config.output_dir
    winners = result.winners()
    timed = {"nerf": VANILLA} | {tier: w.architecture for tier, w in winners.items() if w is not None}
    milliseconds, frame = frame_milliseconds(timed, config, timing_repeats)
    vanilla_record = next((r for r in result.records if r.architecture.key == VANILLA.key), None)
    rows = [table_row("NeRF", VANILLA, vanilla_record, None, milliseconds)]
    for tier, winner in winners.items():
        if winner is None:
            console.print(f"[yellow]No evaluated architecture meets the {tier.upper()} target: none written.")
            continue
        path = out / "architectures" / f"{tier}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {"tier": tier, "target_ssim": result.targets.ssim[tier], "ssim": winner.ssim,
                 "psnr": winner.psnr, "params": winner.params, "gflops": winner.gflops, "trial": winner.label,
                 "run": winner.run}  # fmt: skip
        with atomic_path(path) as tmp:
            save_architecture(tmp, winner.architecture.coarse, winner.architecture.fine, **extra)
        rows.append(table_row(tier.upper(), winner.architecture, winner, result.targets.ssim[tier], milliseconds, path))
    summary = {
        "targets": result.targets.to_dict(),
        "frame": list(frame),
        "rows": rows,
        "outcomes": {part: dict(counts) for part, counts in result.outcomes.items()},
        "pareto_front": [r.label for r in result.pareto_front()],
        "records": [asdict(r) | {"trial": r.label} for r in result.records],
    }
    for name, text in (("table.md", markdown_table(rows, frame)), ("table.csv", csv_table(rows)),
                       ("summary.json", json.dumps(summary, indent=2))):  # fmt: skip
        atomic_write(out / name, text)
    with atomic_path(out / "pareto.png") as tmp:
        pareto_figure(result, winners).savefig(tmp, format="png", dpi=150)
    console.print(rich_table(rows, frame))
    console.print(f"Written to {out}/: architectures/, table.md, table.csv, pareto.png, summary.json")
    if (s := next((row for row in rows if row["model"] == "S"), None)) is not None:
        console.print(
            f"Train a tier: ns-train nas-nerf --data {config.data} --pipeline.model.architecture-file "
            f"{s['architecture_file']}"
        )
    return summary


def frame_milliseconds(
    architectures: dict[str, Architecture], config: SearchConfig, repeats: int
) -> tuple[dict[str, float], tuple[int, int]]:
    """Median time to render the first eval frame of the scene with each distinct architecture, renders
    interleaved so that load from other processes hits all of them alike (the median also discounts a slow
    first render). Returns ms per name (none for 0 repeats) and the frame (H, W)."""
    parser, _ = dataparser_for(config.data)  # the scene as the trials read it
    outputs = parser.setup().get_dataparser_outputs(split="val")
    device = default_device_type()
    camera = outputs.cameras[0:1].to(device)
    frame = (int(camera.height.item()), int(camera.width.item()))
    if repeats == 0:
        return {}, frame
    models = {
        a.key: NASNeRFModelConfig(coarse_cell=a.coarse, fine_cell=a.fine)
        .setup(scene_box=outputs.scene_box, num_train_data=len(outputs.image_filenames), metadata=outputs.metadata)
        .to(device)
        .eval()
        for a in architectures.values()
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nerfstudio's deprecation noise, once per render
        times = round_robin_seconds(
            {key: partial(model.get_outputs_for_camera, camera) for key, model in models.items()}, repeats
        )
    return {name: 1000 * statistics.median(times[a.key]) for name, a in architectures.items()}, frame


def table_row(
    model: str,
    architecture: Architecture,
    record: Record | None,
    target: float | None,
    ms: dict[str, float],
    architecture_file: Path | None = None,
) -> dict:
    cost, vanilla = architecture.cost(), VANILLA.cost()
    frame_ms = ms.get(model.lower())
    return {
        "model": model,
        "coarse_depths": list(architecture.coarse.depths),
        "fine_depths": list(architecture.fine.depths),
        "coarse_channels": list(architecture.coarse.channels),
        "fine_channels": list(architecture.fine.channels),
        "params": cost.params,
        "params_reduction": vanilla.params / cost.params,
        "gflops": cost.paper_flops / 1e9,
        "flops_reduction": vanilla.paper_flops / cost.paper_flops,
        "ms_per_frame": frame_ms,
        "speedup": ms["nerf"] / frame_ms if frame_ms else None,
        "psnr": record.psnr if record else None,
        "ssim": record.ssim if record else None,
        "target_ssim": target,
        "trial": record.label if record else None,
        "architecture_file": str(architecture_file) if architecture_file else None,
    }


def _cells(row: dict, kind: str) -> str:
    return " / ".join(str(row[f"{field}_{kind}"]).replace(" ", "") for field in ("coarse", "fine"))


def _metric(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _formatted(row: dict) -> list[str]:
    return [
        row["model"], _cells(row, "depths"), _cells(row, "channels"), f"{row['params'] / 1e6:.3f} M",
        f"{row['params_reduction']:.1f}×", f"{row['gflops']:.2f}", f"{row['flops_reduction']:.1f}×",
        _metric(row["ms_per_frame"], ".0f"), _metric(row["speedup"], ".1f") + "×", _metric(row["psnr"], ".2f"),
        _metric(row["ssim"], ".4f"), _metric(row["target_ssim"], ".4f"),
    ]  # fmt: skip


HEADERS = ["model", "depths (coarse / fine)", "channels (coarse / fine)", "params", "× fewer", "GFLOPs", "× fewer",
           "ms / frame", "× faster", "PSNR", "SSIM", "target SSIM"]  # fmt: skip


def markdown_table(rows: list[dict], frame: tuple[int, int]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_formatted(row)) + " |" for row in rows]
    note = (
        f"\nGFLOPs: paper convention (2048 rays × (64 + 193) samples). ms / frame: one {frame[0]}×{frame[1]} eval "
        "frame at 64 + 128 samples, median of interleaved renders, ratio against vanilla NeRF cells timed in the "
        "same run. PSNR / SSIM: eval split after the search's training budget (vanilla: only if its cells were "
        "trained in the search)."
    )
    return "\n".join(lines) + "\n" + note + "\n"


def csv_table(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: " ".join(map(str, v)) if isinstance(v, list) else v for key, v in row.items()})
    return buffer.getvalue()


def rich_table(rows: list[dict], frame: tuple[int, int]) -> Table:
    table = Table(title=f"NAS-NeRF search (render time: {frame[0]}×{frame[1]} frame on this machine)")
    for header in HEADERS:
        table.add_column(header, justify="left" if header == "model" or "(" in header else "right")
    for row in rows:
        table.add_row(*_formatted(row))
    return table


def pareto_figure(result: SearchResult, winners: dict[str, Record | None]) -> Figure:
    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    axes = figure.subplots()
    axes.scatter([r.gflops for r in result.records], [r.ssim for r in result.records], s=16, c="0.6",
                 label="evaluated architectures")  # fmt: skip
    front = result.pareto_front()
    axes.step([r.gflops for r in front], [r.ssim for r in front], where="post", c="tab:blue", lw=1.2,
              label="Pareto front")  # fmt: skip
    for tier in TIERS:
        colour, target, winner = TIER_COLOURS[tier], result.targets.ssim[tier], winners[tier]
        axes.axhline(target, ls="--", lw=0.8, c=colour)
        if winner is not None:
            axes.scatter([winner.gflops], [winner.ssim], marker="*", s=180, c=colour, edgecolors="k", zorder=3,
                         label=f"{tier.upper()}: {winner.gflops:.2f} GFLOPs, SSIM {winner.ssim:.3f} "
                               f"(target {target:.3f})")  # fmt: skip
    axes.axvline(VANILLA.cost().paper_flops / 1e9, ls=":", c="k", lw=0.8, label="vanilla NeRF FLOPs")
    axes.set(xscale="log", xlabel="GFLOPs (2048 rays × 257 samples)", ylabel="SSIM (eval split)",
             title="NAS-NeRF search: SSIM against FLOPs")  # fmt: skip
    axes.legend(fontsize=7, loc="lower right")
    return figure
