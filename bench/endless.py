"""A long session through the real engine process: ms per chunk and engine RSS against chunk index (table + PNG).

    python bench/endless.py [--latent-frames 2000] [--model-dir DIR] [--rope-frames N] [--sim-chunks 300]

Drives `python -m inference.engine` with a stand-in front
(inference/tools/engine_probe.py): one lingbot-fast session (a tiny random
checkpoint unless --model-dir; window mode, the reference's 1024-frame RoPE
table unless --rope-frames) for --latent-frames latent frames, then a sim
session for --sim-chunks chunks. Each chunk is asked for as soon as the
previous one arrived. Prints a table per 50 chunks and the ratios the issue
asks for (median ms of the last 100 chunks over chunks 50-150; RSS change),
and writes artifacts/endless.png and artifacts/endless.json. One run's
numbers; a shared CPU is noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.tools.engine_probe import ChunkRecord, EngineProbe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHUNK_LATENTS = 3
ROWS_EVERY = 50


def run(args: list[str], size: str, chunks: int, label: str) -> list[ChunkRecord]:
    with EngineProbe(args) as probe:
        print(f"{label}: {probe.ready.model} on {probe.ready.device}, {chunks} chunks at {size}", flush=True)
        probe.open("endless", size=size)
        return probe.stream("endless", chunks, on_chunk=lambda r: r.index % 100 == 99 and print(
            f"  ... chunk {r.index + 1}", flush=True))


def table(records: list[ChunkRecord], latent_per_chunk: int | None) -> None:
    head = "latent end " if latent_per_chunk else ""
    print(f"  chunks     {head}ms p10  ms median  ms p90  model ms  RSS MiB")
    for lo in range(0, len(records), ROWS_EVERY):
        part = records[lo:lo + ROWS_EVERY]
        ms = sorted(r.total_ms for r in part)
        latent = f"{part[-1].index * latent_per_chunk + latent_per_chunk:10d} " if latent_per_chunk else ""
        print(f"  {lo:4d}-{part[-1].index:<4d}  {latent}{low(ms):6.1f} {statistics.median(ms):10.1f} "
              f"{ms[int(0.9 * (len(ms) - 1))]:7.1f} "
              f"{statistics.median(r.model_ms for r in part):9.1f} {part[-1].rss_mb:8.1f}")


def low(ms: list[float]) -> float:
    """10th percentile: what a chunk costs when the CPU is not taken by others (load only adds time)."""
    ordered = sorted(ms)
    return ordered[int(0.1 * (len(ordered) - 1))]


def ratios(records: list[ChunkRecord]) -> dict:
    early, late = [r.total_ms for r in records[50:150]], [r.total_ms for r in records[-100:]]
    out = {"ms_median_late_over_early": statistics.median(late) / statistics.median(early),
           "ms_p10_late_over_early": low(late) / low(early),
           "rss_early_mb": statistics.median(r.rss_mb for r in records[50:150]),
           "rss_late_mb": statistics.median(r.rss_mb for r in records[-100:])}
    print(f"  last 100 chunks / chunks 50-150: median ms {out['ms_median_late_over_early']:.2f}, "
          f"p10 ms {out['ms_p10_late_over_early']:.2f};  median RSS {out['rss_early_mb']:.1f} -> "
          f"{out['rss_late_mb']:.1f} MiB")
    return out


def plot(series: dict[str, list[ChunkRecord]], marks: dict[str, int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(series), figsize=(6 * len(series), 6), squeeze=False, sharex="col")
    for col, (name, records) in enumerate(series.items()):
        index = [r.index for r in records]
        ms = [r.total_ms for r in records]
        rolling = [statistics.median(ms[max(0, i - 10):i + 11]) for i in range(len(ms))]
        axes[0, col].plot(index, ms, ".", markersize=2, alpha=0.4, label="chunk")
        axes[0, col].plot(index, rolling, "-", label="median of 21")
        axes[0, col].set_ylabel("ms per chunk")
        axes[0, col].set_title(name)
        axes[0, col].legend(loc="upper right")
        axes[1, col].plot(index, [r.rss_mb for r in records], "-")
        axes[1, col].set_ylabel("engine RSS (MiB)")
        axes[1, col].set_xlabel("chunk index")
        if name in marks:
            for ax in axes[:, col]:
                ax.axvline(marks[name], color="gray", linestyle="--", linewidth=1)
            axes[1, col].annotate("first re-anchoring", (marks[name], axes[1, col].get_ylim()[0]), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latent-frames", type=int, default=2000)
    ap.add_argument("--model-dir", default="", help="lingbot-fast checkpoint folder (default: a tiny random one)")
    ap.add_argument("--size", default="48*32", help="lingbot session size (the tiny checkpoint's is 48*32)")
    ap.add_argument("--rope-frames", type=int, default=1024)
    ap.add_argument("--engine-args", default="", help="extra engine flags for lingbot-fast, e.g. '--kv-window 12'")
    ap.add_argument("--sim-chunks", type=int, default=300, help="0 skips the sim session")
    ap.add_argument("--out", default=str(REPO / "artifacts"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    series, marks, summary = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if not model_dir:
            from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint

            model_dir = str(make_tiny_checkpoint(Path(tmp) / "lingbot-tiny", seed=2, sizes=(args.size,)))
        chunks = args.latent_frames // CHUNK_LATENTS
        engine_args = ["--engine", "lingbot-fast", "--model-dir", model_dir, "--rope-frames", str(args.rope_frames),
                       *args.engine_args.split()]
        name = f"lingbot-fast (tiny, table {args.rope_frames})"
        series[name] = run(engine_args, args.size, chunks, name)
        marks[name] = args.rope_frames // CHUNK_LATENTS  # first chunk whose frames pass the table
        table(series[name], CHUNK_LATENTS)
        summary[name] = ratios(series[name])
    if args.sim_chunks:
        series["sim"] = run(["--engine", "sim"], "832*480", args.sim_chunks, "sim")
        table(series["sim"], None)
        summary["sim"] = ratios(series["sim"])
    png = out / "endless.png"
    plot(series, marks, png)
    (out / "endless.json").write_text(json.dumps(
        {"summary": summary, "records": {k: [vars(r) for r in v] for k, v in series.items()}}, indent=1))
    print(f"wrote {png} and {out / 'endless.json'}")


if __name__ == "__main__":
    main()
