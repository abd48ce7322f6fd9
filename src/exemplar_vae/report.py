"""Reports of run folders: pictures and report.md for one run, a markdown table of evaluated runs."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from exemplar_vae.errors import ConfigError
from exemplar_vae.generation import exemplar_grid, prior_sample_grid
from exemplar_vae.io import EVALUATION, atomic_write_text, read_metrics
from exemplar_vae.runs import load_run, load_run_config
from exemplar_vae.viz import plot_training_curves, save_image_grid


def std_error_text(value: float | None) -> str:
    """A standard error for printing: "n/a" where it is undefined (one example)."""
    return "n/a" if value is None else f"{value:.2f}"


def write_report(run_dir: str | Path, device: str = "auto", seed: int = 0) -> Path:
    """Pictures and a short markdown report for a run folder.

    Writes samples.png (64 prior samples), exemplars.png (10 exemplars, each followed by 10 variations),
    curves.png (training curves) and report.md (configuration, training summary, evaluation.json if
    ``evaluate`` was run).
    """
    run_dir = Path(run_dir)
    model, data, config = load_run(run_dir, device=device)
    g = torch.Generator(device=model.device).manual_seed(seed)
    save_image_grid(prior_sample_grid(model, 64, g), data.image_shape, run_dir / "samples.png")
    pick = torch.randperm(data.num_train, generator=torch.Generator().manual_seed(seed))[:10]
    save_image_grid(
        exemplar_grid(model, data.train_x[pick], 10, g), data.image_shape, run_dir / "exemplars.png"
    )
    history = read_metrics(run_dir)
    if history:
        plot_training_curves(history, run_dir / "curves.png")
    lines = [f"# exemplar-vae run: {config.prior.name} prior on {data.name}", ""]
    lines += ["## Configuration", "", "| section | setting | value |", "|---|---|---|"]
    for section, values in config.to_dict().items():
        lines += [f"| {section} | {k} | {v} |" for k, v in values.items()]
    lines += ["", f"Data: {data.summary()}", ""]
    if history:
        best = min(history, key=lambda m: m["val_loss"])
        total = sum(m["seconds"] for m in history)
        lines += [
            "## Training",
            "",
            f"{len(history)} epochs in {total:.0f} s ({total / len(history):.1f} s per epoch); best validation "
            f"-ELBO {best['val_loss']:.2f} nats at epoch {best['epoch']} "
            f"(reconstruction {best['val_rec']:.2f}, KL {best['val_kl']:.2f}).",
            "",
            "![training curves](curves.png)",
            "",
        ]
    eval_path = run_dir / EVALUATION
    if eval_path.is_file():
        ev = json.loads(eval_path.read_text())
        lines += [
            "## Evaluation",
            "",
            f"{ev['split']} split, {ev['examples']} examples, S={ev['samples']} importance samples, "
            f"{ev['exemplars']} exemplars:",
            "",
            f"- log-likelihood: **{ev['log_likelihood']:.2f} ± {std_error_text(ev['log_likelihood_std_error'])} nats** "
            f"({ev['bits_per_dim']:.4f} bits/dim)",
            f"- ELBO: {ev['elbo']:.2f} nats",
        ]
        check = ev.get("truncation_check")
        if check:
            lines.append(
                f"- prior truncated to the {ev['candidates']} exemplars nearest each test point (a lower bound); "
                f"against the full prior on {check['points']} points with the same samples the error was "
                f"{check['mean_error']:.2e} nats on average, {check['max_error']:.2e} at most"
            )
        lines.append("")
    lines += [
        "## Pictures",
        "",
        "Samples from the prior (decoder means):",
        "",
        "![samples](samples.png)",
        "",
        "Exemplar-based generation (each row: a training exemplar, then 10 draws from r(z|x), decoded):",
        "",
        "![exemplars](exemplars.png)",
        "",
    ]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def results_table(run_dirs: list[str | Path]) -> str:
    """A markdown table of evaluated runs: prior, budget, test log-likelihood and ELBO (nats).

    Every number is read from the run folders (config.json, metrics.jsonl, evaluation.json).
    """
    header = (
        "| prior | dataset | train N | epochs (warm-up) | M / k | split, n, S | log-likelihood (nats) "
        "| ELBO (nats) | s/epoch |\n|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise ConfigError(f"run folder {run_dir} does not exist")
        eval_path = run_dir / EVALUATION
        if not eval_path.is_file():
            raise ConfigError(f"{run_dir} has no {EVALUATION}: run `exemplar-vae evaluate {run_dir}` first")
        ev = json.loads(eval_path.read_text())
        config = load_run_config(run_dir)
        history = read_metrics(run_dir)
        epochs = len(history)
        per_epoch = sum(m["seconds"] for m in history) / max(1, epochs)
        p = config.prior
        mk = (
            f"{p.exemplars} / {p.knn if p.knn else 'exact'}"
            if p.name == "exemplar"
            else (f"K={p.components}" if p.name in ("vampprior", "mog") else "-")
        )
        if p.name == "vampprior" and p.subsample is not None:
            mk += f", K'={p.subsample} per step"
        if p.name == "exemplar" and p.grad_tolerance is not None:
            mk += f", gradient tolerance {p.grad_tolerance:g}"
        extra = ev.get("extra_exemplars", 0)
        train_n = f"{ev.get('train_examples', ev['exemplars'])}" + (f" (+{extra} exemplars)" if extra else "")
        rows.append(
            f"| {p.name} | {ev['dataset']} | {train_n} | {epochs} ({config.train.warmup}) | {mk} "
            f"| {ev['split']}, {ev['examples']}, {ev['samples']} "
            f"| {ev['log_likelihood']:.2f} ± {std_error_text(ev['log_likelihood_std_error'])} | {ev['elbo']:.2f} "
            f"| {per_epoch:.1f} |"
        )
    return "\n".join([header, *rows]) + "\n"
