"""Does a lower temperature improve sample quality? A Fréchet distance per prior and temperature.

The authors' response: "It's common to decrease the temperature of the model to improve sample quality
and FID scores." This script measures it without downloading an Inception network: the features are the
last hidden layer of the paper's MLP classifier (``downstream.classifier``, trained here on the runs'
dataset, or loaded from ``--classifier-cache``), and the score is the Fréchet distance
(``evaluation.quality``) between n samples of each run at each temperature and the first n test images
(grey). Lower is better; the numbers compare the rows and columns of one table only (not published FIDs).
A reference row gives the distance from n training images to the same n test images: the score of a
model whose samples were real images, i.e. the measure's floor at this n.

Temperature follows each prior's own semantics (``Prior.sample``): it multiplies the standard deviation of
the Gaussian noise (of N(0, I), of the picked VampPrior or MoG component, of the exemplar prior's kernel
around the picked exemplar's code); the component choice does not depend on it. Every temperature of a
run uses the same generator seed, so the comparison across temperatures uses the same component draws.

    .venv/bin/python experiments/sample_quality.py runs/fashion/gaussian runs/fashion/vampprior \
        runs/fashion/mog runs/fashion/exemplar --classifier-epochs 30 --samples 10000 \
        --temperatures 0.5 0.7 0.85 1.0 --classifier-cache results/fashion_mlp_classifier.pt \
        --out results/sample_quality.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

from exemplar_vae.data import DataSplits, ExemplarStore, canonical_name, load_dataset
from exemplar_vae.downstream import classifier as classifier_module
from exemplar_vae.downstream.classifier import build_classifier, classifier_test_set, train_classifier
from exemplar_vae.evaluation.quality import (
    classifier_features,
    feature_statistics,
    frechet_distance,
    sample_frechet,
)
from exemplar_vae.io import atomic_write, atomic_write_text
from exemplar_vae.runs import load_run, load_run_config, resolve_device


def fit_classifier(
    data: DataSplits, hidden: int, epochs: int, seed: int, device: torch.device
) -> tuple[nn.Sequential, dict[str, Any]]:
    """Train the paper's MLP classifier with ``train_classifier`` (the protocol of ``exemplar-vae classify``)
    and return the trained network with its result.

    ``train_classifier`` returns only figures; the network it builds is captured by wrapping
    ``build_classifier`` for the duration of the call (one training implementation, not two).
    """
    built: list[nn.Sequential] = []

    def capture(*args: int) -> nn.Sequential:
        net = build_classifier(*args)
        built.append(net)
        return net

    with mock.patch.object(classifier_module, "build_classifier", capture):
        result = train_classifier(data, hidden=hidden, epochs=epochs, seed=seed, device=device)
    assert len(built) == 1
    return built[0].eval(), result


def classifier_for(
    data: DataSplits, args: argparse.Namespace, device: torch.device
) -> tuple[nn.Sequential, dict]:
    """The classifier from ``--classifier-cache`` when it holds one of these settings, else trained (and
    saved there). Returns (network in eval mode, its settings and test error)."""
    want = {
        "dataset": data.name,
        "data_dim": data.data_dim,
        "hidden": args.classifier_hidden,
        "epochs": args.classifier_epochs,
        "seed": args.seed,
    }
    cache: Path | None = args.classifier_cache
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        meta = saved["meta"]
        if {k: meta.get(k) for k in want} != want:
            sys.exit(
                f"error: {cache} holds a classifier for {meta}, not {want}; pass another --classifier-cache"
            )
        net = build_classifier(data.data_dim, args.classifier_hidden, int(meta["classes"]))
        net.load_state_dict(saved["state_dict"])
        print(f"classifier loaded from {cache} (test error {meta['test_error']:.2f}%)", file=sys.stderr)
        return net.to(device).eval(), meta
    net, result = fit_classifier(data, args.classifier_hidden, args.classifier_epochs, args.seed, device)
    meta = {**want, "classes": result["classes"], "test_error": result["test_error"]}
    print(f"classifier trained: test error {meta['test_error']:.2f}%", file=sys.stderr)
    if cache is not None:
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        atomic_write(cache, lambda f: torch.save({"state_dict": state, "meta": meta}, f))
    return net, meta


def prior_label(config: Any) -> str:
    """The table's name of a run's prior, with the sizes that distinguish runs of one prior."""
    p = config.prior
    if p.name == "vampprior":
        return f"vampprior (K={p.components}" + (f", K'={p.subsample})" if p.subsample is not None else ")")
    if p.name == "mog":
        return f"mog (K={p.components})"
    if p.name == "exemplar":
        return f"exemplar (M={p.exemplars}, k={p.knn})"
    return p.name


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="trained runs on one dataset (one row each)")
    p.add_argument(
        "--classifier-epochs", type=int, default=30, help="epochs of the MLP classifier (default 30)"
    )
    p.add_argument("--classifier-hidden", type=int, default=1024, help="its hidden width H (default 1024)")
    p.add_argument(
        "--classifier-cache", type=Path, default=None, help="load the classifier from / save it to here"
    )
    p.add_argument("--samples", type=int, default=10000, help="n samples and n test images (default 10000)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 0.7, 0.85, 1.0], help="columns")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which weights of a run")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the classifier and of the samples (default 0)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--data-dir", default=None, help="folder with the dataset's standard files")
    p.add_argument("--out", type=Path, default=None, help="write the table (markdown) here")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    configs = [load_run_config(run) for run in args.runs]
    datasets = {canonical_name(c.data.dataset) for c in configs}
    if len(datasets) != 1:
        sys.exit(f"error: the runs use different datasets {sorted(datasets)}; one table per dataset")
    data = load_dataset(configs[0].data.dataset, args.data_dir)
    net, meta = classifier_for(data, args, device)
    real_x, kind = classifier_test_set(data)
    n = args.samples
    if not 2 <= n <= min(real_x.shape[0], data.num_train):
        sys.exit(f"error: --samples must be between 2 and {min(real_x.shape[0], data.num_train)}, got {n}")
    temps = args.temperatures
    rows = []
    # the measure's floor: n real training images against the same n test images
    train_x = (
        data.train_x.gather(torch.arange(n)) if isinstance(data.train_x, ExemplarStore) else data.train_x[:n]
    )
    real_stats = feature_statistics(classifier_features(net, real_x[:n]))
    floor = frechet_distance(*real_stats, *feature_statistics(classifier_features(net, train_x)))
    rows.append("| real training images (floor) | — | " + " | ".join(f"{floor:.2f}" for _ in temps) + " |")
    for run, config in zip(args.runs, configs):
        same_train = config.data.train_size is None  # else the run's exemplar set is a prefix: reload it
        model, _, config = load_run(
            run, args.checkpoint, device=str(device), data=data if same_train else None
        )
        cells = []
        for t in temps:
            generator = torch.Generator(device=model.device).manual_seed(args.seed)  # same draws for every T
            cells.append(f"{sample_frechet(model, net, real_x, n, t, generator):.2f}")
            print(f"{run} T={t}: {cells[-1]}", file=sys.stderr)
        rows.append(f"| {prior_label(config)} | `{run}` | " + " | ".join(cells) + " |")
    command = shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Sample quality by prior and temperature: Fréchet distance in MLP-classifier features",
        "",
        f"Command: `python experiments/sample_quality.py {command}`",
        "",
        f"{data.name}: {n} samples per cell (decoder means, `model.generate(n, generator, T)`, seed {args.seed} "
        f"for every T) against the first {n} {kind} test images. Features: the last hidden layer (after ReLU) "
        f"of the paper's MLP classifier, 2x{meta['hidden']}, {meta['epochs']} epoch{'s' if meta['epochs'] != 1 else ''}, seed {meta['seed']}, "
        f"test error {meta['test_error']:.2f}%. Fréchet distance |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 "
        "C1^1/2)^1/2) in float64; lower is better; comparable within this table only. T multiplies the "
        "standard deviation of the prior's noise (component choice unchanged).",
        "",
        "| prior | run | " + " | ".join(f"T = {t:g}" for t in temps) + " |",
        "|---|---|" + "---|" * len(temps),
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
