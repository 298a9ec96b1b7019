#!/usr/bin/python3
"""Draws the benchmark results in bench/results/*.json as PNGs in docs/img/ (Debian's python3-matplotlib)."""
import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
results = os.path.join(root, "bench", "results")
out = os.path.join(root, "docs", "img")
os.makedirs(out, exist_ok=True)


def load(name):
    path = os.path.join(results, name)
    return json.load(open(path)) if os.path.exists(path) else None


def cdf(ax, samples, label):
    xs = sorted(samples)
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    ax.plot(xs, ys, label=f"{label} (p50 {xs[len(xs) // 2]:.1f} ms)")


def latency_figure(kind, title, xlabel, log=False):
    files = sorted(glob.glob(os.path.join(results, f"{kind}-*.json")))
    if not files:
        return
    fig, axes = plt.subplots(1, len(files), figsize=(6 * len(files), 4), squeeze=False)
    for ax, path in zip(axes[0], files):
        r = json.load(open(path))
        for name, samples in r.get("samples", {}).items():
            label = {"moat": "Moat", "raw": f"raw {'runc' if r['tier'] == 'container' else 'runsc'}"}.get(name, name)
            cdf(ax, samples, label)
        ax.set_title(f"{title} — {r['tier']}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction of runs")
        if log:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"{kind}.png"), dpi=110)
    print("wrote", os.path.join(out, f"{kind}.png"))


latency_figure("create", "create → result of `python3 -c pass`", "milliseconds")
latency_figure("exec", "exec round trip of `true`", "milliseconds", log=True)

density = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(results, "density-*.json")))]
if density:
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in density:
        xs = [p["sandboxes"] for p in r["curve"]]
        ys = [p["hostMemoryMiB"] for p in r["curve"]]
        ax.plot(xs, ys, marker=".", label=f"{r['tier']}: {r['hostMiBPerSandbox']} MiB each")
    ax.set_xlabel("idle sandboxes")
    ax.set_ylabel("host memory used (MiB)")
    ax.set_title("host memory as idle sandboxes accumulate")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "density.png"), dpi=110)
    print("wrote", os.path.join(out, "density.png"))


fanout = load("fanout-container.json")
if fanout:
    fig, ax = plt.subplots(figsize=(7, 4))
    cdf(ax, fanout["samples"]["moat"], f"Moat, {fanout['sandboxes']} container sandboxes")
    e2b = fanout["e2b"]
    ax.axvline(e2b["p50"], color="grey", linestyle="--", label=f"E2B published p50 {e2b['p50']} ms ({e2b['sandboxes']} sandboxes)")
    ax.axvline(e2b["p99"], color="grey", linestyle=":", label=f"E2B published p99 {e2b['p99']} ms")
    ax.set_title("exec fan-out: one `echo` in every sandbox at once")
    ax.set_xlabel("per-sandbox latency, milliseconds")
    ax.set_ylabel("fraction of sandboxes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "fanout.png"), dpi=110)
    print("wrote", os.path.join(out, "fanout.png"))
sys.exit(0)
