#!/usr/bin/env python3
"""Plots the latency CDFs that `switchboard-bench --samples-dir DIR` wrote.

Usage: bench/scripts/plot.py DIR OUT_DIR   (needs matplotlib: pip install matplotlib)
"""
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [float(r["latency_ms"]) for r in rows], [float(r["quantile"]) for r in rows]


def main():
    samples, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, label in [("one_to_one_switchboard", "Switchboard, embedded (Wasm + durable store)"),
                        ("one_to_one_cluster", "Switchboard, 2 gateways + Redis + Cassandra"),
                        ("one_to_one_relay", "bare tokio relay (baseline)")]:
        path = samples / f"{name}.csv"
        if path.exists():
            x, y = read(path)
            ax.plot(x, y, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (ms, log scale)")
    ax.set_ylabel("fraction of messages")
    ax.set_title("1:1 delivery latency at 50% of each server's peak rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency-cdf.png", dpi=110)
    print(f"wrote {out / 'latency-cdf.png'}")

    sweep = samples / "throughput.csv"
    if sweep.exists():
        with open(sweep) as f:
            rows = list(csv.DictReader(f))
        pairs = [int(r["pairs"]) for r in rows]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(pairs, [float(r["switchboard"]) for r in rows], marker="o",
                label="Switchboard, embedded (Wasm + durable store)")
        ax.plot(pairs, [float(r["relay"]) for r in rows], marker="o",
                label="bare tokio relay (baseline)")
        ax.set_xscale("log")
        ax.set_xlabel("sender/receiver pairs (2 connections each, log scale)")
        ax.set_ylabel("delivered messages/s (closed loop)")
        ax.set_title("Throughput against connections")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "throughput-vs-connections.png", dpi=110)
        print(f"wrote {out / 'throughput-vs-connections.png'}")


if __name__ == "__main__":
    main()
