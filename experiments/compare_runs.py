"""Compare training runs that differ in one option, at equal epochs: per-epoch validation loss and the
test log-likelihood of each run's evaluation.json, paired by seed.

    python experiments/compare_runs.py --baseline A1 A2 --candidate B1 B2 --label "exact search" \
        --candidate-label "ivf search" [--out results/x.md]

Runs are paired in the order given (same seeds). Every figure is read from the run folders.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from exemplar_vae.io import EVALUATION, atomic_write_text, read_metrics


def epochs(run: Path) -> list[dict]:
    return [r for r in read_metrics(run) if "epoch" in r]


def evaluation(run: Path, path: Path | None = None) -> dict:
    path = run / EVALUATION if path is None else path
    if not path.is_file():
        sys.exit(f"error: {path} does not exist: run `exemplar-vae evaluate {run}` first")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", nargs="+", type=Path, required=True)
    p.add_argument("--candidate", nargs="+", type=Path, required=True)
    p.add_argument(
        "--baseline-evaluations", nargs="+", type=Path, default=None,
        help="evaluation JSON files of the baseline runs (default: each run's evaluation.json), e.g. a "
        "re-evaluation with the same code as the candidates",
    )  # fmt: skip
    p.add_argument("--label", default="baseline")
    p.add_argument("--candidate-label", default="candidate")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = p.parse_args(argv)
    if len(args.baseline) != len(args.candidate):
        sys.exit("error: give as many --candidate runs as --baseline runs (paired by seed)")
    base_evals = args.baseline_evaluations or [None] * len(args.baseline)
    if len(base_evals) != len(args.baseline):
        sys.exit("error: give one --baseline-evaluations file per --baseline run")
    lines = [
        f"# {args.candidate_label} against {args.label}, at equal epochs",
        "",
        f"Command: `python experiments/compare_runs.py {shlex.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        "| pair | seed | epochs | final val loss, " + args.label + " | final val loss, " + args.candidate_label
        + " | largest val-loss gap after epoch 5 | test LL, " + args.label + " | test LL, "
        + args.candidate_label + " | LL difference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    diffs: list[float] = []
    logged: list[tuple[int, float]] = []  # (epoch, search recall) of the candidate runs
    first_eval: dict = {}  # the first baseline's evaluation: samples, split, candidates for the text
    for i, (a, b, a_eval) in enumerate(zip(args.baseline, args.candidate, base_evals, strict=True), 1):
        ea, eb = epochs(a), epochs(b)
        logged += [(r["epoch"], r["search_recall"]) for r in eb if "search_recall" in r]
        n = min(len(ea), len(eb))
        gap = max((abs(eb[j]["val_loss"] - ea[j]["val_loss"]) for j in range(5, n)), default=float("nan"))
        la, lb = evaluation(a, a_eval), evaluation(b)
        first_eval = first_eval or la
        for key in ("samples", "examples", "candidates", "split"):
            if la.get(key) != lb.get(key):
                sys.exit(
                    f"error: {a} and {b} were evaluated with different {key}: {la.get(key)} vs {lb.get(key)}"
                )
        seed = json.loads((a / "config.json").read_text())["train"]["seed"]
        diff = lb["log_likelihood"] - la["log_likelihood"]
        diffs.append(diff)
        lines.append(
            f"| {i} | {seed} | {n} | {ea[n - 1]['val_loss']:.3f} | {eb[n - 1]['val_loss']:.3f} | {gap:.3f} "
            f"| {la['log_likelihood']:.3f} | {lb['log_likelihood']:.3f} | {diff:+.3f} |"
        )
    ev = first_eval
    lines += [
        "",
        f"Test log-likelihood (nats, higher is better): {ev['examples']} {ev['split']} images, S = {ev['samples']}"
        + (f", exemplar prior truncated to {ev['candidates']} candidates" if ev.get("candidates") else "")
        + f". Mean difference ({args.candidate_label} - {args.label}): {statistics.mean(diffs):+.3f} nats.",
    ]
    if logged:
        low = min(logged, key=lambda e: e[1])
        first = [r for e, r in logged if e == 1]
        later = [r for e, r in logged if e > 1]
        lines.append(
            f"Search recall logged by the {args.candidate_label} runs (first batch after each index rebuild, "
            f"{len(logged)} epochs): median {statistics.median(r for _, r in logged):.4f}, min {low[1]:.4f} "
            f"(epoch {low[0]})"
            + (f"; epoch 1: {', '.join(f'{r:.4f}' for r in first)}" if first else "")
            + (f"; min over epochs > 1: {min(later):.4f}" if later else "")
            + "."
        )
    if args.baseline_evaluations:
        lines.append(
            "Baseline evaluations read from: " + ", ".join(f"`{p}`" for p in args.baseline_evaluations) + "."
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out is not None:
        atomic_write_text(args.out, report)


if __name__ == "__main__":
    main()
