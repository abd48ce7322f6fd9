"""The exact exemplar prior with the encoder's gradient only through the exemplars that carry the mass.

``--grad-tolerance tol`` (``PriorConfig.grad_tolerance``) encodes the M exemplars of a step without
gradient, keeps for each training point the fewest exemplars holding all but tol of its responsibility,
and re-encodes only their union J with gradient (``ExemplarPrior.exact_log_prob_sparse_grad``). The value
is the exact prior's; the encoder's gradient leaves out the dropped exemplars' terms.

Part 1 (``measure``), on a trained Fashion-MNIST model (the weights of ``--run``, read only) with the
exact prior over M = N/2: for each tolerance, on the same training batches (same binarisation, noise and
exemplar subset), |J|, the relative L2 error of the encoder's gradient against the exact one (of the whole
loss, and against the part of it that flows through the exemplars), the largest dropped mass, and the time
of a full training step (``Trainer.step``), with the exact step (option off) and an official-code-style
exact step (all M encoded with gradient, M drawn with replacement, a float64 kernel, per-tensor gradient
normalisation and Adam) timed in the same interleaved rounds. Ratios are per round, then the median.

Part 2 (``train``): two runs with identical seeds, exact prior over M = N/2 of a Fashion-MNIST subset, with
and without the option, for the same epochs on one thread; both scored on the same test points with the
same importance samples (full prior, ``point_log_likelihoods``).

    .venv/bin/python experiments/exact_gradient.py measure --run /root/longruns/runs/exemplar
    .venv/bin/python experiments/exact_gradient.py train --out /tmp/exact_gradient
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from exemplar_vae import DataConfig, ModelConfig, PriorConfig, RunConfig, TrainConfig
from exemplar_vae.config import EvalConfig
from exemplar_vae.data import dynamic_binarize, load_dataset
from exemplar_vae.data.datasets import DataSplits
from exemplar_vae.evaluation import point_log_likelihoods
from exemplar_vae.functional import mass_carrying_components
from exemplar_vae.models.vae import VAE
from exemplar_vae.objectives.elbo import elbo_terms
from exemplar_vae.pipeline import train
from exemplar_vae.priors.exemplar import ExemplarPrior
from exemplar_vae.runs import build_model, load_run
from exemplar_vae.training import Trainer
from exemplar_vae.validation import validate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from train_rows import OfficialStep  # noqa: E402  (the benchmark's modules import each other as siblings)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# -- part 1: per-step measurements -----------------------------------------------------------------------
def exact_model(
    run_config: RunConfig, data: DataSplits, state: dict[str, Tensor], tol: float | None
) -> tuple[VAE, RunConfig]:
    """The run's networks and weights with the exact prior over M = N/2 and gradient tolerance ``tol``
    (in training mode), and the configuration they were built from."""
    prior = PriorConfig(name="exemplar", knn=0, grad_tolerance=tol)
    config = eager_cpu(validate(dataclasses.replace(run_config, prior=prior), data.num_train, data.data_dim))
    model = build_model(config, data, "cpu")
    model.load_state_dict(state)
    model.train()
    return model, config


def eager_cpu(config: RunConfig) -> RunConfig:
    """``config`` on the CPU, with the training step run eagerly (a ``compile`` setting, where the
    configuration has one, switched off: the rows compare the steps, not a compiler)."""
    names = {f.name for f in dataclasses.fields(config.train)}
    off: dict[str, Any] = {"compile": "off"} if "compile" in names else {}
    return dataclasses.replace(config, train=dataclasses.replace(config.train, device="cpu", **off))


def exemplar_prior(model: VAE) -> ExemplarPrior:
    assert isinstance(model.prior, ExemplarPrior)
    return model.prior


def flat_encoder_grad(model: VAE) -> Tensor:
    """The encoder's gradient as one float64 vector [P]."""
    return torch.cat([
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
        for p in model.encoder.parameters()  # type: ignore[attr-defined]
    ])  # fmt: skip


def batch_gradient(model: VAE, data: DataSplits, idx: Tensor, seed: int, tol: float | None) -> dict[str, Any]:
    """The loss of one training batch (beta = 1) and its encoder gradient with tolerance ``tol``; the
    batch's randomness (binarisation, z, exemplar subset) comes from ``seed``, so every tolerance sees the
    same step. Also returns the exemplar-path part of the exact gradient (``tol`` None only)."""
    prior = exemplar_prior(model)
    prior.grad_tolerance = tol
    seen: dict[str, Any] = {}
    log_prob, draw_subset, union = prior.log_prob, prior.draw_subset, prior.mass_carrying_union

    def record_log_prob(
        z: Tensor, encoder: Any, index: Tensor | None = None, generator: Any = None
    ) -> Tensor:
        seen.update(z=z.detach(), index=index)
        return log_prob(z, encoder, index, generator)

    def record_subset(generator: torch.Generator | None = None) -> Any:
        seen["subset"] = draw_subset(generator)
        return seen["subset"]

    def record_union(resp: Tensor, tolerance: float) -> tuple[Tensor, Tensor]:
        seen["resp"] = resp
        return union(resp, tolerance)

    prior.log_prob = record_log_prob  # type: ignore[method-assign]
    prior.draw_subset = record_subset  # type: ignore[method-assign]
    prior.mass_carrying_union = record_union  # type: ignore[method-assign]
    try:
        g = torch.Generator().manual_seed(seed)
        x = dynamic_binarize(data.train_store.gather(idx), g)  # [B, D]
        noise = model.draw_noise(idx.shape[0], g)
        model.zero_grad()
        terms = elbo_terms(model, x, idx, 1.0, g, noise)
        terms.loss.backward()
        out: dict[str, Any] = {"grad": flat_encoder_grad(model)}
        if tol is None:  # the gradient through the exemplars' codes alone: z held fixed, the same subset
            model.zero_grad()
            log_pz = prior.exact_log_prob(seen["z"], model.encoder, seen["index"], seen["subset"])
            (-log_pz.sum() / idx.shape[0]).backward()
            out["exemplar_grad"] = flat_encoder_grad(model)
        else:
            worst, size = prior.grad_stats  # type: ignore[misc]
            out.update(J=size, neglected=float(worst), resp=seen["resp"])
        model.zero_grad()
        return out
    finally:
        del prior.log_prob, prior.draw_subset, prior.mass_carrying_union
        prior.grad_tolerance = None


def trainer_step(trainer: Trainer, stats: list[tuple[int, float]]) -> Callable[[], None]:
    """One ``Trainer.step`` per call on the next batch of epoch 1 (the same sequence for every row),
    reading the loss on the host as ``train_epoch`` does; records (|J|, dropped mass) when the option is on."""
    batches = trainer.sampler.batches(1)
    prior = exemplar_prior(trainer.model)
    count = [0]

    def step() -> None:
        i = count[0] % len(batches)
        trainer.step(batches[i], beta=1.0, epoch=1, step=i).tolist()
        count[0] += 1
        if prior.grad_stats is not None:
            worst, size = prior.grad_stats
            stats.append((size, float(worst)))

    return step


def measure(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    tols = [float(t) for t in args.tolerances.split(",")]
    model, data, run_config = load_run(args.run, device="cpu", refresh=False)  # read only
    state = {k: v.clone() for k, v in model.state_dict().items()}
    del model
    m = data.num_train // 2
    log(f"measure: {args.run} ({data.name}, N = {data.num_train}, M = {m}), {args.threads} thread(s)")

    # gradients: the same batches for every tolerance, weights as loaded
    probe, _ = exact_model(run_config, data, state, None)
    g = torch.Generator().manual_seed(args.seed)
    grads: dict[float, dict[str, list[float]]] = {
        t: {"J": [], "err": [], "err_path": [], "mass": []} for t in tols
    }
    select_ms: dict[float, list[float]] = {t: [] for t in tols}
    for b in range(args.grad_batches):
        idx = torch.randperm(data.num_train, generator=g)[:100]
        seed = args.seed * 1000 + b
        ref = batch_gradient(probe, data, idx, seed, None)
        for tol in tols:
            got = batch_gradient(probe, data, idx, seed, tol)
            diff = float((got["grad"] - ref["grad"]).norm())
            grads[tol]["J"].append(got["J"])
            grads[tol]["err"].append(diff / float(ref["grad"].norm()))
            grads[tol]["err_path"].append(diff / float(ref["exemplar_grad"].norm()))
            grads[tol]["mass"].append(got["neglected"])
            for _ in range(3):
                start = time.perf_counter()
                mass_carrying_components(got["resp"], tol)
                select_ms[tol].append(1000 * (time.perf_counter() - start))
        log(f"  gradient batch {b + 1}/{args.grad_batches}: J = {[grads[t]['J'][-1] for t in tols]}")
    del probe

    # step times, interleaved: every row takes its steps in each round
    rows: list[tuple[str, Callable[[], None], list[tuple[int, float]]]] = []
    for row_tol in [None, *tols]:
        model, config = exact_model(run_config, data, state, row_tol)
        stats: list[tuple[int, float]] = []
        trainer = Trainer(model, data, config, None, progress=False)
        rows.append(
            (
                f"tol {row_tol:g}" if row_tol is not None else "exact (off)",
                trainer_step(trainer, stats),
                stats,
            )
        )
    bench = argparse.Namespace(batch_size=100, device=torch.device("cpu"), seed=args.seed)
    official = OfficialStep(
        exact_model(run_config, data, state, None)[0], data, bench, m, run_config.train.lr, knn=0
    )  # the bench's official-code exact step (benchmarks/train_rows.py)
    rows.append(("official-style exact", official, []))
    for name, step, _ in rows:  # warm-up
        log(f"  warm-up: {name}")
        for _ in range(args.warmup):
            step()
    for _, _, stats in rows:
        stats.clear()
    times: dict[str, list[list[float]]] = {name: [] for name, _, _ in rows}
    for r in range(args.rounds):
        for name, step, _ in rows:
            took = []
            for _ in range(args.steps):
                start = time.perf_counter()
                step()
                took.append(time.perf_counter() - start)
            times[name].append(took)
        log(
            f"  round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n} {statistics.median(t[-1]):.2f}s" for n, t in times.items())
        )

    def ratio(name: str) -> float:  # the row's step over the exact step, round by round, then the median
        return statistics.median(
            statistics.median(a) / statistics.median(b)
            for a, b in zip(times[name], times["exact (off)"], strict=True)
        )

    def median_s(name: str) -> float:
        return statistics.median(t for rnd in times[name] for t in rnd)

    lines = [
        "| row | J (gradient batches, mean) | J (timed steps, mean) | encoder grad rel. L2 error, whole loss "
        "| rel. to exemplar-path grad | neglected mass, max | selection ms (median) | step s (median) "
        "| step / exact step (paired) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines.append(f"| exact (off) | {m:,} | {m:,} | 0 | 0 | 0 | - | {median_s('exact (off)'):.2f} | 1.00 |")
    for (name, _, stats), tol in zip(rows[1:-1], tols, strict=True):
        gr = grads[tol]
        lines.append(
            f"| {name} | {statistics.mean(gr['J']):,.0f} | {statistics.mean(s for s, _ in stats):,.0f} "
            f"| {max(gr['err']):.1e} (mean {statistics.mean(gr['err']):.1e}) "
            f"| {max(gr['err_path']):.1e} (mean {statistics.mean(gr['err_path']):.1e}) "
            f"| {max(max(gr['mass']), max(w for _, w in stats)):.3g} | {statistics.median(select_ms[tol]):.1f} "
            f"| {median_s(name):.2f} | {ratio(name):.2f} |"
        )
    lines.append(
        f"| official-style exact | {m:,} (with replacement) | - | - | - | - | - "
        f"| {median_s('official-style exact'):.2f} | {ratio('official-style exact'):.2f} |"
    )
    head = [
        f"Run `{args.run}` (weights only), {data.name}, N = {data.num_train:,}, M = {m:,}, batch 100, "
        f"{args.threads} thread(s); gradients over {args.grad_batches} batches (beta = 1); "
        f"{args.rounds} interleaved rounds x {args.steps} timed steps per row after {args.warmup} warm-up "
        f"steps; load average at the end {load_average()} (a background job was running: times are "
        "indicative, compare the paired ratios).",
        "",
    ]
    return "\n".join(head + lines) + "\n"


# -- part 2: equal epochs --------------------------------------------------------------------------------
def train_pair(args: argparse.Namespace) -> str:
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist", train_size=args.train_size)
    test = data.test_x[: args.eval_points]
    rows, lls = [], {}
    for tol in (None, args.train_tolerance):
        name = "off" if tol is None else f"tol-{tol:g}"
        config = RunConfig(
            data=DataConfig(dataset="fashion-mnist", train_size=args.train_size),
            model=ModelConfig(),
            prior=PriorConfig(name="exemplar", knn=0, grad_tolerance=tol),
            train=TrainConfig(
                epochs=args.epochs, warmup=args.warmup, early_stopping=0, seed=args.seed, device="cpu"
            ),
        )
        log(f"train: {name}, {args.epochs} epochs on {args.train_size} images, 1 thread")
        start = time.perf_counter()
        model, result = train(config, args.out / name, progress=False, data=data)
        seconds = time.perf_counter() - start
        evaluation = EvalConfig(samples=args.samples, candidates=None, check_exact=0, seed=0)
        ll, _ = point_log_likelihoods(model, test, evaluation)  # [n] same samples for both runs
        lls[name] = ll.double()
        last = result.history[-1]
        mass = last.get("grad_neglected_mass")
        rows.append(
            f"| {name} | {result.epochs_run} | {seconds:.0f} | {last['val_loss']:.3f} | {float(ll.mean()):.3f} "
            f"| {last.get('grad_exemplars', '-')} | {'-' if mass is None else f'{mass:.3g}'} "
            f"| {last['prior_log_var']:.3f} |"
        )
        log(f"  {name}: {seconds:.0f} s, test LL {float(ll.mean()):.3f}")
    diff = lls[f"tol-{args.train_tolerance:g}"] - lls["off"]  # [n] paired per point
    se = float(diff.std() / math.sqrt(diff.numel()))
    head = [
        f"Fashion-MNIST, first {args.train_size:,} training images (M = {args.train_size // 2:,}), MLP VAE "
        f"defaults, exact prior, seed {args.seed}, {args.epochs} epochs (KL warm-up {args.warmup}), 1 thread; "
        f"test log-likelihood of the last epoch's best weights on the first {test.shape[0]:,} test images, "
        f"S = {args.samples}, full prior, the same importance samples (EvalConfig seed 0) for both runs.",
        "",
        "| run | epochs | train s | val loss (last) | test LL | J (last step) | neglected mass (last step) "
        "| log sigma^2 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    tail = [
        "",
        f"Test LL difference (option - off), paired over points: {float(diff.mean()):+.3f} nats "
        f"(standard error {se:.3f}; largest per point {float(diff.abs().max()):.3f}).",
    ]
    return "\n".join(head + rows + tail) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="part", required=True)
    m = sub.add_parser("measure", help="per-step |J|, gradient error, neglected mass and step time")
    m.add_argument(
        "--run", type=Path, default=Path("/root/longruns/runs/exemplar"), help="trained run (read)"
    )
    m.add_argument("--tolerances", default="1e-4,1e-3,1e-2", help="comma-separated tolerances")
    m.add_argument("--grad-batches", type=int, default=5, help="batches for the gradient errors")
    m.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    m.add_argument("--steps", type=int, default=2, help="timed steps per row and round")
    m.add_argument("--warmup", type=int, default=1, help="untimed steps per row first")
    m.add_argument("--threads", type=int, default=1, help="torch threads")
    m.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train", help="equal-epoch runs with and without the option, and their test LL")
    t.add_argument("--out", type=Path, default=Path("/tmp/exact_gradient"), help="run folders go here")
    t.add_argument("--train-size", type=int, default=10_000, help="first N training images")
    t.add_argument("--epochs", type=int, default=5, help="epochs of each run")
    t.add_argument("--warmup", type=int, default=0, help="KL warm-up epochs (0: beta = 1 throughout)")
    t.add_argument("--train-tolerance", type=float, default=1e-3, help="the option's tolerance")
    t.add_argument("--eval-points", type=int, default=1000, help="first n test images")
    t.add_argument("--samples", type=int, default=1000, help="importance samples per test image")
    t.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    start = time.perf_counter()
    text = measure(args) if args.part == "measure" else train_pair(args)
    command = shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"`python experiments/exact_gradient.py {command}` ({time.perf_counter() - start:.0f} s)\n\n{text}")


if __name__ == "__main__":
    main()
