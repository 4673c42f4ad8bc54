"""Service-level benchmark on this machine: lmhead-server (CPU backend) driven by lmhead-bench on
loopback. Measures dynamic batching (16 concurrent B=1 streams with --max_batch_rows=64 vs 1) and
a latency/throughput curve over concurrency 1..64; writes a markdown table and a PNG plot.

Run with the test venv (matplotlib from PyPI for the plot):
  LMHEAD_BUILD_DIR=build .venv/bin/python client/loadgen/service_bench.py --out-dir client/loadgen
Note: the load generator runs on the same machine and competes with the server for its cores.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "python"))
import lmhead_testlib as lib  # noqa: E402


def run_bench(target, concurrency, seconds, rows=1):
    out = subprocess.run([lib.binary("lmhead-bench"), f"--target={target}", "--mode=stream",
                          f"--concurrency={concurrency}", f"--rows={rows}", f"--duration={seconds}s", "--json",
                          "--progress=false"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--out-dir", default=".")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="lmhead_service_bench_")
    ckpt = os.path.join(tmp, "ckpt")
    lib.make_checkpoint(ckpt, args.vocab, args.hidden)
    lines = [f"# lmhead service benchmark (CPU backend)\n",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores (server and load generator share them). "
             f"Head {args.vocab}x{args.hidden} FP8 per-row; B=1 requests of bf16 rows on StreamLogits, closed loop; "
             f"{args.seconds} s per point.\n"]
    batching = {}
    for max_batch in (64, 1):
        with lib.Server(ckpt, f"--max_batch_rows={max_batch}", "--max_queued_rows=4096") as server:
            batching[max_batch] = run_bench(server.target, 16, args.seconds)
    ratio = batching[64]["rows_per_second"] / batching[1]["rows_per_second"]
    lines += ["## Dynamic batching: 16 concurrent B=1 streams\n",
              "| --max_batch_rows | rows/s | p50 ms | p99 ms |", "|---|---|---|---|"]
    for mb in (64, 1):
        s = batching[mb]
        lines.append(f"| {mb} | {s['rows_per_second']:.1f} | {s['latency_ms']['p50']:.2f} | {s['latency_ms']['p99']:.2f} |")
    lines.append(f"\nBatching gives {ratio:.1f}x the rows/s of one row per batch (target >= 4x).\n")
    curve = []
    with lib.Server(ckpt, "--max_batch_rows=64", "--max_queued_rows=4096") as server:
        for c in (1, 2, 4, 8, 16, 32, 64):
            s = run_bench(server.target, c, args.seconds)
            curve.append((c, s))
    lines += ["## Latency and throughput over concurrency (--max_batch_rows=64)\n",
              "| streams | rows/s | p50 ms | p90 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for c, s in curve:
        lat = s["latency_ms"]
        lines.append(f"| {c} | {s['rows_per_second']:.1f} | {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | "
                     f"{sum(s['errors'].values())} |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "service_bench_results.md"), "w") as f:
        f.write(text)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    fig, ax1 = plt.subplots(figsize=(7, 4))
    xs = [c for c, _ in curve]
    ax1.plot(xs, [s["rows_per_second"] for _, s in curve], "o-", color="tab:blue", label="rows/s")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("concurrent B=1 streams")
    ax1.set_ylabel("rows/s", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(xs, [s["latency_ms"]["p50"] for _, s in curve], "s--", color="tab:red", label="p50 ms")
    ax2.plot(xs, [s["latency_ms"]["p99"] for _, s in curve], "^:", color="tab:orange", label="p99 ms")
    ax2.set_ylabel("latency ms", color="tab:red")
    fig.legend(loc="upper left")
    ax1.set_title(f"lmhead CPU backend, {args.vocab}x{args.hidden} FP8, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out_dir, "service_bench.png"), dpi=100)


if __name__ == "__main__":
    main()
