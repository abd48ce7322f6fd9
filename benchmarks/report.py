"""The markdown report: the machine, the rates, the training and evaluation tables, peak memory, and
writing it to RESULTS.md."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

import torch
from common import prior_label
from eval_rows import EvalResults
from rates import UNSTEADY, Rates, step_floor_flops, step_products
from train_rows import RECALL_BATCHES, TrainRow, paired_ratio, round_median

from exemplar_vae import DataSplits, ModelConfig
from exemplar_vae.io import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine_lines(device: torch.device) -> list[str]:
    """Date, CPU (or GPU), cores, torch version, threads, load: the context every figure was taken in."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import faiss  # type: ignore[import-untyped]

        knn = f"faiss {faiss.__version__}"
    except ImportError:
        knn = "torch (faiss not installed)"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    lines = [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {cpu}, {cores} cores available; load average (1, 5, 15 min) at start: {load}",
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads (`torch.get_num_threads()`), "
        f"device {device}; kNN search: {knn}; Python {platform.python_version()}",
    ]
    if device.type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(device)}")
    if hasattr(os, "getloadavg") and cores and os.getloadavg()[0] > 0.5 * cores:
        lines.append(
            f"- **warning: the machine was busy at start (1-min load {os.getloadavg()[0]:.1f} on {cores} "
            "cores); other processes disturb these timings**"
        )
    lines.append(f"- command: `{shlex.join(sys.orig_argv)}`")
    return lines


# -- 0. machine rates ------------------------------------------------------------------------------------
def rates_report(r: Rates, args: argparse.Namespace) -> list[str]:
    return [
        "## 0. Machine rates and FLOP counts",
        "",
        f"- float32 matmul, {args.square}x{args.square} square: **{r.square_gflops:.1f} GFLOP/s**",
        f"- float32 matmul, the decoder's products on {args.chunk_rows:,} rows (one evaluation chunk; each gated "
        "layer's two maps as one product of twice the width, as the model runs them): "
        f"**{r.decoder_gflops:.1f} GFLOP/s**, the fastest of {len(r.decoder_samples)} measurements taken between "
        f"the sections of this run ({', '.join(f'{g:.0f}' for g in r.decoder_samples)}; the machine's speed "
        "drifts): the rate every floor below uses",
        f"- decoder: {r.decoder_flops / 1e6:.3f} MFLOP per importance sample (its nn.Linear layers, "
        f"2 x in x out; gates not counted); encoder: {r.encoder_flops / 1e6:.3f} MFLOP per input, of "
        f"which the mean path (what the exemplar prior re-encodes) {r.encoder_mean_flops / 1e6:.3f}",
        *(
            [
                f"- **warning: the matmul rate varied {r.spread:.2f}x during this run (slowest to fastest "
                f"sample; above {UNSTEADY:.2f}x counts as unsteady): other load shared the machine, and the "
                "ratios against the strictest floor overstate the overheads; the local-rate columns are "
                "the steadier figures**"
            ]
            if r.unsteady
            else []
        ),
    ]


# -- 1. training -----------------------------------------------------------------------------------------
def training_report(
    rows: list[TrainRow], rates: Rates, args: argparse.Namespace, data: DataSplits
) -> list[str]:
    knn_rows = [r for r in rows if r.label is None and r.prior.name == "exemplar" and r.prior.knn > 0]
    official = [r for r in rows if r.label is not None and r.prior.knn > 0]
    out = training_table(rows, rates, args, data)
    if official:
        out += official_comparison(official[0], knn_rows, args)
    out += compiled_lines(rows)
    out += exact_lines(rows)
    for r in knn_rows:
        if r.search_s is not None and r.recall is not None:
            out += ivf_search_lines(r, data)
    for r in rows:
        if r.search_s is not None and r.validate_s is not None:
            out += exemplar_prior_lines(r, rates, args, data)
    return out


def training_table(
    rows: list[TrainRow], rates: Rates, args: argparse.Namespace, data: DataSplits
) -> list[str]:
    """The section's heading, what its columns mean, and one row per prior (and the official-style step)."""
    out = [
        f"## 1. Training step (batch {args.batch_size}): forward, backward, AdamNormGrad",
        "",
        f"Median over the timed steps (after {args.warmup} warm-up steps) of one iteration of "
        "`Trainer.train_epoch`. The rows are timed interleaved, in "
        f"{args.rounds} rounds in which every row takes its share of steps, with the decoder-shaped matmul "
        "rate measured between rounds, so that all rows see the same machine (its speed drifts within "
        "minutes). FLOP floor = 3 x forward FLOPs (forward + backward) of the batch through "
        "encoder and decoder, plus the prior's encoder passes (VampPrior: K pseudo-inputs; exemplar prior: "
        "the exemplars re-encoded with gradient, mean path), at the decoder-shaped matmul rate (the fastest "
        "of the run: the strictest floor); `x floor, local rate` is the median over steps of each step against "
        "the floor at its round's rate (the faster of the rates measured at the round's start and end); "
        "`x own products` is the median over rounds of the round's median step against the time the step's "
        "own matrix products take alone in that round (forward, weight and input gradients at the step's "
        "shapes, on random matrices): what is left above 1 is everything but the products. The floor's FLOPs "
        "(3x the forward) exceed the products' (the first encoder layer needs no input gradient for images) "
        "by the factor in parentheses after the row's floor, so `x own products` / `x floor` / that factor "
        "is the products' speed at the step's shapes against the floor's rate. "
        f"`s/epoch` = {rows[0].steps_per_epoch} steps (N = {data.num_train:,}) x median step, plus the "
        "cache refresh for the exemplar prior (floor: N codes through the mean path).",
        "",
        "| prior | k | M | exemplars re-encoded / step | steps timed | median ms/step | floor ms/step "
        "| x floor | x floor, local rate | x own products | x Gaussian | s/epoch | floor s/epoch "
        "| epoch x floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    return out + [training_row(r, rows[0].median, rates, args, data) for r in rows]


def row_name(r: TrainRow) -> tuple[str, str, str]:
    """(name, k, M) of a training row: the prior, with the search of a kNN exemplar row."""
    name, k, m = prior_label(r.prior)
    if r.label is not None:
        name = r.label
    elif r.prior.name == "exemplar" and r.prior.knn > 0:
        name += f", {r.prior.search} search" + (
            f" (nprobe {r.prior.nprobe})" if r.prior.search == "ivf" else ""
        )
    if r.compiled:
        name += ", **compiled**"
    return name, k, m


def training_row(r: TrainRow, base: float, rates: Rates, args: argparse.Namespace, data: DataSplits) -> str:
    """One row of the training table; ``base`` is the Gaussian prior's median step."""
    name, k, m = row_name(r)
    rate = rates.decoder_gflops * 1e9
    flops = step_floor_flops(r, rates, args.batch_size)
    floor = flops / rate
    local = statistics.median(
        t / (flops / (1e9 * rates.round_rates[rd])) for t, rd in zip(r.step_s, r.step_round, strict=True)
    )
    own = statistics.median(round_median(r, rd) / products for rd, products in r.products_s.items())
    refresh = statistics.median(r.refresh_s) if r.refresh_s else 0.0
    refresh += r.index_s or 0.0
    epoch = r.steps_per_epoch * r.median + refresh
    refresh_floor = data.num_train * rates.encoder_mean_flops / rate
    epoch_floor = r.steps_per_epoch * floor + (refresh_floor if r.refresh_s else 0.0)
    union = f"{r.union:,}" if r.union is not None else "-"
    products = sum(2 * a * b * c for a, b, c in step_products(r, rates, args.batch_size))
    return (
        f"| {name} | {k} | {m} | {union} | {len(r.step_s)} | {1e3 * r.median:.1f} | {1e3 * floor:.1f} "
        f"({flops / products:.2f}) "
        f"| {r.median / floor:.2f} | {local:.2f} | {own:.2f} "
        f"| {r.median / base:.2f} | {epoch:.1f} | {epoch_floor:.1f} "
        f"| {epoch / epoch_floor:.2f} |"
    )


def official_comparison(o: TrainRow, knn_rows: list[TrainRow], args: argparse.Namespace) -> list[str]:
    """The official-style step against each of our kNN rows, paired round by round."""
    return [
        "",
        f"Against the official code's retrieval step written out on the same networks ({o.label}: M "
        "indices drawn with replacement, torch distances + `topk` over the M cached codes, the union "
        f"re-encoded with gradient, same loss and optimiser; {'trained' if args.run else 'untrained'} "
        f"weights, {o.union:,} exemplars re-encoded in its last step; the official code's per-tensor "
        "gradient normalisation and Adam), its step divided by ours, the median over rounds of the "
        "rounds' median steps (above 1: ours is faster): "
        + "; ".join(
            f"{r.prior.search} search{', compiled' if r.compiled else ''} **{paired_ratio(o, r):.2f}** "
            f"(overall medians {1e3 * o.median:.1f} / {1e3 * r.median:.1f} ms)"
            for r in knn_rows
        ),
    ]


def _same_row(a: TrainRow, b: TrainRow) -> bool:
    return a.label is None and b.label is None and a.prior == b.prior


def compiled_lines(rows: list[TrainRow]) -> list[str]:
    """Each compiled row against the same row run eagerly (paired round by round), its compile time and
    the steps it takes to win that time back."""
    out = []
    for c in (r for r in rows if r.compiled):
        eager = next((r for r in rows if not r.compiled and _same_row(r, c)), None)
        if eager is None:
            continue
        ratio = paired_ratio(eager, c)
        saved = eager.median - c.median
        payback = f"{(c.compile_s or 0.0) / saved:,.0f} steps" if saved > 0 else "never (not faster)"
        if not c.compile_s:
            payback = "at once (the graph an earlier row compiled was reused)"
        name, k, _ = row_name(c)
        out.append(
            f"- {name.replace(', **compiled**', '')} (k {k}): compiled step **{ratio:.2f}x** faster than "
            f"eager (medians {1e3 * eager.median:.1f} / {1e3 * c.median:.1f} ms), compile time "
            f"{c.compile_s or 0.0:.1f} s, won back after {payback}"
        )
    return ["", "Compiled (`--compile on`) against eager, paired round by round:", "", *out] if out else []


def exact_lines(rows: list[TrainRow]) -> list[str]:
    """The exact prior (k = 0) rows against the official code's exact step (all M drawn with replacement
    and encoded with gradient, float64 kernel), paired round by round: our plain exact step, and with a
    gradient tolerance (only the mass-carrying exemplars re-encoded with gradient), eager and compiled."""
    official = next((r for r in rows if r.label is not None and r.prior.knn == 0), None)
    if official is None:
        return []
    out = []
    for r in rows:
        if r.label is None and r.prior.name == "exemplar" and r.prior.knn == 0:
            what = f"gradient tolerance {r.prior.grad_tolerance:g}" if r.prior.grad_tolerance else "all M"
            out.append(
                f"- exact prior, {what}{', compiled' if r.compiled else ''}: **{paired_ratio(official, r):.2f}x** "
                f"faster than the official-style exact step (medians {1e3 * official.median:.0f} / "
                f"{1e3 * r.median:.0f} ms; {r.union or 0:,} exemplars re-encoded with gradient per step)"
            )
    head = (
        "Exact prior (k = 0, M = {:,}) against the official code's exact step on the same networks, paired:"
    )
    return ["", head.format(official.prior.exemplars or 0), "", *out] if out else []


def ivf_search_lines(r: TrainRow, data: DataSplits) -> list[str]:
    """The IVF row's index build, search time and recall."""
    assert r.search_s is not None and r.recall is not None and r.index_s is not None
    return [
        "",
        f"IVF search (k = {r.prior.knn}, M = {r.prior.exemplars:,}, nprobe {r.prior.nprobe}): an inverted-file "
        f"index over all {data.num_train:,} codes, built after each cache refresh in {r.index_s:.2f} s "
        f"(counted in its epoch), over-fetching to stay inside each step's M-subset: median "
        f"{1e3 * r.search_s:.1f} ms per batch ({r.search_s / r.median:.0%} of its step), recall "
        f"{r.recall:.4f} against the exact search ({RECALL_BATCHES} batches of codes drawn from q(z|x)); "
        f"{r.union} distinct exemplars retrieved for one batch.",
    ]


def exemplar_prior_lines(r: TrainRow, rates: Rates, args: argparse.Namespace, data: DataSplits) -> list[str]:
    """The exact-search kNN row's cache refresh, search, retrieval and validation."""
    assert r.search_s is not None and r.validate_s is not None
    refresh_floor = data.num_train * rates.encoder_mean_flops / (rates.decoder_gflops * 1e9)
    return [
        "",
        f"Exemplar prior (k = {r.prior.knn}, M = {r.prior.exemplars:,}):",
        "",
        f"- cache refresh (encoding all {data.num_train:,} training images): median "
        f"{statistics.median(r.refresh_s):.2f} s over {len(r.refresh_s)} calls (floor "
        f"{refresh_floor:.2f} s)",
        f"- kNN search of one batch ({args.batch_size} codes among M = {r.prior.exemplars:,}, k + 1 = "
        f"{r.prior.knn + 1} each, exact flat search: recall 1): median {1e3 * r.search_s:.1f} ms "
        f"({r.search_s / r.median:.0%} of a step)",
        f"- retrieval: one batch retrieved {r.union} distinct exemplars (at most "
        f"{args.batch_size * (r.prior.knn + 1)}), re-encoded with gradient at every step",
        f"- one `Trainer.validate()` on {data.val_x.shape[0]:,} validation images (full prior over all "
        f"{data.num_train:,} exemplars), cache fresh: {r.validate_s:.2f} s",
    ]


# -- 2. evaluation ---------------------------------------------------------------------------------------
def evaluation_report(e: EvalResults, rates: Rates, args: argparse.Namespace, data: DataSplits) -> list[str]:
    n_test, s = data.test_x.shape[0], args.samples
    floor = n_test * s * rates.decoder_flops / (rates.decoder_gflops * 1e9)
    per_point = e.default_s / e.points
    # the element-wise functions the default evaluates per sample, at the per-element rates measured at
    # start: a softplus for each of the D logits, an exp for each of the K kept kernel terms
    elem = floor + n_test * s * 1e-9 * (data.data_dim * rates.softplus_ns + args.candidates * rates.exp_ns)
    full = e.refresh_s + n_test * per_point
    bf = e.check_exact_s / e.check_points
    off = e.official_s / e.official_points
    c = e.certified
    return [
        f"## 2. Evaluation at the protocol: {n_test:,} test points, S = {s:,}, N = {data.num_train:,} "
        "exemplars",
        "",
        f"On the {e.model}. Default = `evaluate_density(model, x, EvalConfig(samples=S, candidates="
        f"{args.candidates}))` (the prior truncated to the {args.candidates} exemplars nearest each test "
        f"point's encoder mean, batches of {args.eval_batch}). Full-protocol time = one cache refresh "
        f"({e.refresh_s:.2f} s) + {n_test:,} x (seconds per point measured on the first {e.points} test "
        f"points). Decoder-FLOP floor = {n_test:,} x {s:,} x {rates.decoder_flops / 1e6:.3f} MFLOP / "
        f"{rates.decoder_gflops:.1f} GFLOP/s.",
        "",
        "| evaluation | points timed | s / test point | est. s for the protocol | x decoder floor "
        "| default is faster by |",
        "|---|---|---|---|---|---|",
        f"| decoder-FLOP floor | - | {floor / n_test:.4f} | {floor:.0f} | 1.00 | - |",
        f"| decoder-FLOP floor + the default's element-wise functions (a softplus per logit, an exp per "
        f"kept kernel term) | - | {elem / n_test:.4f} | {elem:.0f} | {elem / floor:.2f} | - |",
        f"| **default (truncated, K = {args.candidates})** | {e.points} | {per_point:.4f} | {full:.0f} "
        f"| **{full / floor:.2f}** | - |",
        *compiled_eval_row(e, floor, n_test),
        f"| brute force at matmul speed (full prior, float32 blocks) | {e.check_points} | {bf:.4f} "
        f"| {n_test * bf:.0f} | {n_test * bf / floor:.2f} | **{bf / per_point:.1f}x** |",
        f"| official-code style (per point, encoder on S copies, float64 full prior) | {e.official_points} "
        f"| {off:.3f} | {n_test * off:.0f} | {n_test * off / floor:.1f} | **{off / per_point:.0f}x** |",
        f"| certified (`certify=True`, tolerance {c['tolerance']} nats) | {e.certify_points} "
        f"| {e.certify_s / e.certify_points:.4f} | {n_test * e.certify_s / e.certify_points:.0f} "
        f"| {n_test * e.certify_s / e.certify_points / floor:.2f} | - |",
        "",
        f"- truncation error of the default against the matmul brute force, same importance samples, "
        f"{e.check_points} points: mean {e.check_mean_error:.2e} nats, max {e.check_max_error:.2e} nats "
        f"(the default on these points: {e.check_default_s:.2f} s)",
        f"- against the decoder-FLOP floor plus its element-wise functions (softplus {rates.softplus_ns:.2f} ns "
        f"and exp {rates.exp_ns:.2f} ns per element, measured on one chunk) the default is "
        f"**{full / elem:.2f}x**",
        f"- at the rate measured just before and after the default path ({e.local_gflops:.1f} GFLOP/s, the "
        f"faster of the two; the machine as it ran then) the default is **{full / floor * e.local_gflops / rates.decoder_gflops:.2f}x** "
        "its decoder floor",
        *compiled_eval_lines(e, rates, floor, n_test),
        f"- official-style log-likelihood of the first {e.official_points} point(s) (its own samples): "
        + ", ".join(f"{v:.2f}" for v in e.official_ll)
        + " nats",
        f"- certified on {e.certify_points} points: {100 * c['fraction_below_0.01']:.0f}% certified below 0.01 "
        f"nats; mean bound {c['mean_bound']:.2e}, max {c['max_bound']:.2e} nats; "
        f"{c['exemplars_evaluated_per_point']:.0f} exemplars evaluated exactly per point beyond the "
        f"{args.candidates} candidates, {c['nodes_per_point']:.0f} tree nodes bounded per point; "
        f"{c['bound_seconds']:.2f} s of the {e.certify_s:.2f} s spent bounding (tree build included)",
    ]


def compiled_eval_row(e: EvalResults, floor: float, n_test: int) -> list[str]:
    """The default path compiled (``EvalConfig(compile="on")``), compile time excluded (it is a fixed
    cost, given below): a table row, or nothing when it was not measured."""
    if e.compiled_s is None:
        return []
    per_point = e.compiled_s / e.points
    full = e.refresh_s + n_test * per_point + (e.compile_s or 0.0)
    return [
        f"| **default, compiled** (`--compile on`; est. protocol time includes the compile time) "
        f"| {e.points} | {per_point:.4f} | {full:.0f} | **{(full - (e.compile_s or 0.0)) / floor:.2f}** "
        f"(without compile time) | - |"
    ]


def compiled_eval_lines(e: EvalResults, rates: Rates, floor: float, n_test: int) -> list[str]:
    """Compiled against eager on the same points and samples: speed-up, compile time, break-even, the
    difference of the estimates, and the compiled path against its floor at the rate measured around it."""
    if e.compiled_s is None or e.compiled_ll is None or e.compile_s is None:
        return []
    saved = (e.default_s - e.compiled_s) / e.points  # seconds per point
    even = f"{e.compile_s / saved:,.0f} test points" if saved > 0 else "never (not faster)"
    local = e.compiled_local_gflops or e.local_gflops
    local_floor = floor * rates.decoder_gflops / local  # the floor at the rate the machine had then
    return [
        f"- compiled against eager on the same {e.points} points and samples: "
        f"**{e.default_s / e.compiled_s:.2f}x** faster (compile time excluded); compile time "
        f"{e.compile_s:.1f} s, won back after {even}; log-likelihood {e.compiled_ll:.4f} vs "
        f"{e.default_ll:.4f} nats (difference {e.compiled_ll - e.default_ll:+.1e}); at the rate measured "
        f"around it ({local:.1f} GFLOP/s) the compiled default is "
        f"**{e.compiled_s / e.points * n_test / local_floor:.2f}x** its decoder floor"
    ]


# -- 3. memory and the whole report ----------------------------------------------------------------------
def memory_report(eval_rss: float, train_rss: float, args: argparse.Namespace, m: int) -> list[str]:
    """Peak RSS (MiB) of the evaluation and training children; ``m`` is the training job's M."""
    return [
        "## 3. Peak memory (peak RSS, VmHWM, of a child process running the job alone)",
        "",
        f"- evaluation (default path, {args.eval_points} test points, S = {args.samples:,}, batches of "
        f"{args.eval_batch}, model and data loaded): **{eval_rss:,.0f} MiB** ({eval_rss / 1024:.2f} GiB)",
        f"- training (exemplar prior k = {args.knn}, M = {m:,}: cache refreshes + "
        f"{args.warmup + args.steps + 2} steps, data loaded): **{train_rss:,.0f} MiB** ({train_rss / 1024:.2f} GiB)",
        "",
    ]


def full_report(
    header: list[str], data: DataSplits, seconds: float, sections: list[list[str]], memory: list[str]
) -> str:
    """The whole markdown report: title, machine ``header``, data, total time, the ``sections`` (rates,
    training, evaluation), each followed by a blank line, and the memory lines (none with --no-memory)."""
    model = ModelConfig()
    lines = [
        "# Exemplar VAE: training and evaluation speed against FLOP floors",
        "",
        *header,
        f"- data: {data.summary()}; MLP VAE (gated 2x{model.hidden}, z = {model.latent_dim})",
        f"- total benchmark time: {seconds:.0f} s",
        "",
        "Every figure below was measured in this one run (same machine and load); compare the ratios, not "
        "absolute times from different runs or machines.",
        "",
    ]
    for section in sections:
        lines += [*section, ""]
    return "\n".join(lines + memory)


def write_results(report: str, path: Path = RESULTS) -> None:
    """Write the report to ``path`` (benchmarks/RESULTS.md), atomically."""
    atomic_write_text(path, report)
