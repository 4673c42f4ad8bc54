"""Plots a latency/throughput curve from the JSON lines of kernels/bench/run_curve_on_gpu.sh
(one {"rows", "concurrency", "result": lmhead-bench --json} per point) and writes a markdown table.

  python3 client/loadgen/plot_curve.py kernels/bench/gpu_curve.jsonl --png kernels/bench/gpu_curve.png \
      --md kernels/bench/gpu_curve.md --title "CUDA backend, H100, 131072x5120"
Needs matplotlib.
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("jsonl")
    ap.add_argument("--png", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    with open(args.jsonl) as f:
        points = [json.loads(line) for line in f if line.strip()]
    series = {}
    for p in points:
        series.setdefault(p["rows"], []).append(p)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines = ["| rows per message | streams | rows/s | messages/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|---|"]
    for rows, pts in sorted(series.items()):
        pts.sort(key=lambda p: p["concurrency"])
        xs = [p["result"]["rows_per_second"] for p in pts]
        ys = [p["result"]["latency_ms"]["p50"] for p in pts]
        ax.plot(xs, ys, marker="o", label=f"{rows} row(s) per message")
        for p, x, y in zip(pts, xs, ys):
            ax.annotate(str(p["concurrency"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            r = p["result"]
            lines.append(f"| {rows} | {p['concurrency']} | {r['rows_per_second']:.0f} | {r['requests_per_second']:.0f} | "
                         f"{r['latency_ms']['p50']:.3f} | {r['latency_ms']['p99']:.3f} | {sum(r['errors'].values())} |")
    ax.set_xscale("log")
    ax.set_xlabel("rows/s (log)")
    ax.set_ylabel("p50 latency per message (ms)")
    ax.set_title(args.title + " — labels: concurrent streams")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    with open(args.md, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
