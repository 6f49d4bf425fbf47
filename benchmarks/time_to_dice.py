"""Time-to-Dice curves: medseg trained at several budgets, and the peers, test Dice against training minutes.

Usage: python benchmarks/time_to_dice.py --dataset msd_hippocampus --budgets 2m,5m,15m,30m
       python benchmarks/time_to_dice.py --dataset msd_hippocampus --plot-only
       (--regions FILE as for train_budget.py, e.g. brats_2ch with ../examples/brats_regions.json)

Each budget is one `train_budget.py` run in its own process (train on the split's train list, score its test
list through the real predict and evaluate), one after the other: two at once would share the 2 cores. Their JSON
lines, and those of the peers (`peers/monai_dynunet.py`, run in the peers' pinned venv) on the same data set and
host, are drawn on one chart, ``figures/time_to_dice_<dataset>.png``; the summary is printed as a JSON line.
Only lines from this host's CPU model go on a chart, and only the latest run of each budget.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import RESULTS_LOG, cpu_flags, emit

HERE = Path(__file__).resolve().parent
FIGURES = HERE / "figures"
# published figures drawn as a dashed line: nnU-Net's cross-validated Dice on the full Decathlon task
REFERENCE = {"msd_hippocampus": (0.895, "nnU-Net, 1000 epochs on a GPU (published)")}


def run_budget(dataset: str, budget: str, regions: str | None) -> dict:
    command = [sys.executable, str(HERE / "train_budget.py"), "--dataset", dataset, "--budget", budget]
    if regions:
        command += ["--regions", regions]
    done = subprocess.run(command, cwd=HERE, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"train_budget.py --budget {budget} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def minutes(budget: str) -> float:
    value = float(budget.rstrip("smh"))
    return {"s": value / 60, "m": value, "h": value * 60}[budget[-1]] if budget[-1] in "smh" else value / 60


def curve_points(dataset: str) -> dict[str, list[tuple[float, float, str]]]:
    """name -> [(training minutes, mean test Dice, precision)] from results.jsonl, this host's CPU model only."""
    model = cpu_flags()["model"]
    latest: dict[tuple[str, float], tuple[float, str]] = {}
    for line in RESULTS_LOG.read_text().splitlines():
        row = json.loads(line)
        if row.get("machine", {}).get("cpu", {}).get("model") != model:
            continue
        if row["benchmark"] == f"train_{dataset}" and str(row.get("budget", "")).endswith(("s", "m", "h")) \
                and not row.get("plan_changes") and not row.get("seed"):
            plan = row.get("plan", {})
            tabled = "measured_seconds" in plan and plan["measured_seconds"] is None  # a --no-measure run
            key = ("medseg, table plan (--no-measure)" if tabled else "medseg", minutes(row["budget"]))
            latest[key] = (row["mean_dice"], row.get("plan", {}).get("precision", ""))
        elif row["benchmark"] == f"peer_{dataset}":
            # drawn where it was scored: nnU-Net reads the clock once an epoch, past the mark asked for
            at = round(row["train_seconds"] / 60, 2)
            latest[(row["peer"], at)] = (row["mean_dice"], row.get("precision", "fp32"))
    curves: dict[str, list[tuple[float, float, str]]] = {}
    for (name, at), (dice, precision) in sorted(latest.items()):
        curves.setdefault(name, []).append((at, dice, precision))
    return curves


def plot(dataset: str, curves: dict[str, list[tuple[float, float, str]]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(exist_ok=True)
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for name, points in curves.items():
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        axes.plot(xs, ys, marker="o", label=name)
    if dataset in REFERENCE:
        value, label = REFERENCE[dataset]
        axes.axhline(value, linestyle="--", color="grey", linewidth=1, label=label)
    flags = cpu_flags()
    axes.set(xlabel="training wall-clock minutes (2 CPU cores)", ylabel="mean test Dice (foreground classes)",
             title=f"{dataset}: test Dice against training time", ylim=(0, 1), xscale="log")
    longest = max((p[0] for points in curves.values() for p in points), default=30)
    axes.set_xticks([t for t in (1, 2, 5, 15, 30, 60) if t <= longest * 1.1])
    axes.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes.grid(alpha=0.3)
    axes.legend(title=f"{flags['model']}, {'AMX' if 'amx_bf16' in flags['flags'] else 'no AMX'}", fontsize=8)
    path = FIGURES / f"time_to_dice_{dataset}.png"
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="msd_hippocampus")
    parser.add_argument("--budgets", default="2m,5m,15m,30m")
    parser.add_argument("--regions", default=None)
    parser.add_argument("--plot-only", action="store_true", help="draw the chart from results.jsonl, train nothing")
    args = parser.parse_args()
    if not args.plot_only:
        for budget in args.budgets.split(","):
            print(json.dumps(run_budget(args.dataset, budget, args.regions)), flush=True)
    curves = curve_points(args.dataset)
    path = plot(args.dataset, curves)
    emit("time_to_dice", {"dataset": args.dataset, "figure": str(path.relative_to(HERE)),
                          "curves": {name: [{"minutes": m, "mean_dice": d, "precision": p} for m, d, p in points]
                                     for name, points in curves.items()}})
