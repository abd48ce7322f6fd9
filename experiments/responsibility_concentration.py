"""How much of the retrieval bound's mass sits on a few exemplars during training?

An option for the training step is to send gradients only through the retrieved exemplars that carry the
prior's mass. Whether that saves work depends on how concentrated each training point's responsibilities

    r_bu = N(z_b; mu(x_u), s^2 I) / sum_u' N(z_b; mu(x_u'), s^2 I)   (u over the retrieved union, self masked)

are. For training batches of a trained run (the run's own k, M and search; leave-one-out; z drawn from
q(z|x) of dynamically binarised images, as in a training step right after a cache refresh) this script
counts, for each threshold tau, the exemplars each row needs to reach tau of its mass, and the size of the
union G of those sets over the batch: the exemplars that would be re-encoded with gradient.

Re-encoding cost in encoder-mean passes per step (forward = 1, forward + backward = 3):

* paper's objective: 3 U (every retrieved exemplar re-encoded with gradient);
* gradient only through G, objective value unchanged: U (a forward pass without gradient for all, which
  the responsibilities need) + 3 |G|;
* gradient only through G, the others' codes taken from the epoch's cache (the value changes too): 3 |G|.

    .venv/bin/python experiments/responsibility_concentration.py runs/fashion/exemplar \
        runs/reproduce-fashion-mlp/fashion-mnist-mlp-exemplar/seed1 --out results/responsibility_fashion.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from exemplar_vae.data import dynamic_binarize
from exemplar_vae.functional import leave_one_out_mask, reparameterize
from exemplar_vae.io import atomic_write_text
from exemplar_vae.priors.exemplar import ExemplarPrior, exemplar_log_kernel
from exemplar_vae.runs import load_run


@torch.no_grad()
def batch_counts(model, prior: ExemplarPrior, x: torch.Tensor, idx: torch.Tensor, taus: list[float], gen):  # noqa: ANN001
    """(union size U, per-row counts [len(taus), B], gradient-set sizes [len(taus)]) for one batch."""
    mean, log_var = model.encode(dynamic_binarize(x, gen))  # [B, d]
    z = reparameterize(mean, log_var, torch.randn(mean.shape, generator=gen, device=mean.device))
    subset = prior.draw_subset(gen)
    union = prior.retrieve(z, idx, subset)  # [U]
    centers = model.encoder.mean(prior.gather(union))  # [U, d], current weights
    log_k = exemplar_log_kernel(z, centers, prior.log_var)  # [B, U] float64
    log_k = log_k.masked_fill(leave_one_out_mask(idx, union), float("-inf"))
    resp = torch.softmax(log_k, dim=1)  # [B, U]
    ranked, order = resp.sort(dim=1, descending=True)
    before = ranked.cumsum(1) - ranked  # mass of the exemplars ranked above each one
    counts, sizes = [], []
    for tau in taus:
        needed = before < tau  # [B, U]: the fewest top-ranked exemplars reaching tau of the row's mass
        counts.append(needed.sum(1))
        chosen = torch.zeros(union.numel(), dtype=torch.bool, device=union.device)
        chosen[order[needed]] = True
        sizes.append(int(chosen.sum()))
    return union.numel(), torch.stack(counts), sizes


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="trained exemplar-prior runs with k > 0")
    p.add_argument("--batches", type=int, default=20, help="training batches per run (default 20)")
    p.add_argument("--taus", default="0.9,0.99,0.999", help="mass thresholds (default 0.9,0.99,0.999)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the table (markdown) here")
    args = p.parse_args(argv)
    taus = [float(t) for t in args.taus.split(",")]
    lines = [
        "# Responsibility concentration of the retrieval bound during training",
        "",
        f"Command: `python experiments/responsibility_concentration.py "
        f"{shlex.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        f"{args.batches} training batches per run, drawn as in a training step right after a cache refresh "
        "(the run's k, M and search; leave-one-out; z ~ q(z|x) of dynamically binarised images). U = exemplars "
        "retrieved per batch; per row = exemplars a training point needs to reach tau of its bound's mass; "
        "|G| = union of those over the batch (re-encoded with gradient under the option). Cost in encoder-mean "
        "passes per step, forward 1, forward + backward 3: paper 3U; option, value unchanged U + 3|G|; "
        "option, others from the cache 3|G| (means over batches).",
        "",
        "| run | k | M | batch | U | tau | per row, mean | per row, max | G | G / U | paper 3U "
        "| option U + 3G | option 3G |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in args.runs:
        model, data, config = load_run(run, device="cpu")
        prior = model.prior
        if not isinstance(prior, ExemplarPrior) or prior.knn == 0:
            sys.exit(f"error: {run} is not an exemplar-prior run with retrieval (k > 0)")
        model.train()  # the prior's training form: subsets, leave-one-out, retrieval
        gen = torch.Generator().manual_seed(args.seed)
        batch = config.train.batch_size
        unions, counts, sizes = [], [], []
        for _ in range(args.batches):
            idx = torch.randperm(data.num_train, generator=gen)[:batch]
            u, c, s = batch_counts(model, prior, data.train_x[idx], idx, taus, gen)
            unions.append(u)
            counts.append(c)
            sizes.append(s)
        u_mean = sum(unions) / len(unions)
        per_row = torch.cat(counts, dim=1).double()  # [taus, batches * B]
        for t, tau in enumerate(taus):
            g_mean = sum(s[t] for s in sizes) / len(sizes)
            lines.append(
                f"| `{run}` | {prior.knn} | {prior.num_exemplars:,} | {batch} | {u_mean:.0f} | {tau} | "
                f"{per_row[t].mean():.2f} | {int(per_row[t].max())} | {g_mean:.0f} | {g_mean / u_mean:.2f} | "
                f"{3 * u_mean:.0f} | {u_mean + 3 * g_mean:.0f} | {3 * g_mean:.0f} |"
            )
        print(f"{run}: done", file=sys.stderr)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
