"""What the classifier is fed: Exemplar VAE augmentations of training images, pictured and measured.

For a trained run, draws one fresh augmentation per image as ``classify`` does (z ~ r(z|x) = N(mu(x),
(T sigma)^2 I), decoder mean rounded to 1/255) at several temperatures T, and reports per temperature:

- the mean per-pixel RMS distance of the augmentation to its source image, and of the reconstruction
  (T = 0) to its source: how far the draws move from the exemplar;
- label agreement: the fraction of augmentations whose nearest *real* training image (pixel L2, the
  source excluded) carries the source's label -- against the same fraction for the real images
  themselves (each one's nearest other training image). An augmentation that lands nearer another class
  than real images do feeds the classifier label noise;
- a picture: each row a source image, then augmentations at each temperature.

    .venv/bin/python experiments/augmentation_look.py RUN_DIR --out results/fashion_mnist_augmentations.png

The prior's log sigma^2 (the spread of r(z|x)) is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from exemplar_vae.downstream.augment import ExemplarAugmenter
from exemplar_vae.runs import load_run
from exemplar_vae.viz import save_image_grid


def nearest_labels(
    queries: torch.Tensor, base: torch.Tensor, labels: torch.Tensor, skip: torch.Tensor
) -> torch.Tensor:
    """Label of each query's nearest row of ``base`` (squared L2), row ``skip[i]`` excluded: [Q] int64."""
    b2 = base.pow(2).sum(1)  # [N]
    out = []
    for q, s in zip(queries.split(500), skip.split(500), strict=True):
        d = b2.unsqueeze(0) - 2 * q @ base.T  # [q, N] (+ |q|^2, constant per row)
        d[torch.arange(q.shape[0]), s] = math.inf
        out.append(labels[d.argmin(1)])
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    p.add_argument("--points", type=int, default=2000, help="training images measured (default 2000)")
    p.add_argument("--per-row", type=int, default=4, help="augmentations pictured per temperature")
    p.add_argument("--rows", type=int, default=10, help="source images pictured (one per class)")
    p.add_argument("--out", default=None, help="PNG of the picture")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    model, data, _ = load_run(args.run_dir, device="cpu")
    x, y = data.train_x.float(), data.train_y
    g = torch.Generator().manual_seed(args.seed)
    pick = torch.randperm(x.shape[0], generator=g)[: args.points]
    base_agree = float((nearest_labels(x[pick], x, y, pick) == y[pick]).double().mean())
    rows = []
    for t in args.temperatures:
        aug = ExemplarAugmenter(model, 1, t, "rounded", torch.Generator().manual_seed(args.seed + 1))
        xa, _ = aug(x[pick], y[pick])
        rms = float((xa - x[pick]).pow(2).mean(1).sqrt().mean())
        agree = float((nearest_labels(xa, x, y, pick) == y[pick]).double().mean())
        rows.append({"temperature": t, "rms_to_source": rms, "nearest_real_same_label": agree})
    log_var = float(model.prior.extra_metrics().get("prior_log_var", float("nan")))
    print(json.dumps({"run": args.run_dir, "prior_log_var": log_var, "points": args.points,
                      "real_nearest_other_same_label": base_agree, "rows": rows}, indent=2))  # fmt: skip
    print(
        f"\nprior log sigma^2 = {log_var:.3f} (sigma = {math.exp(0.5 * log_var):.3f}); {args.points} training images"
    )
    print("| T | RMS distance to source | nearest real image has the source's label |")
    print("|---|---|---|")
    print(f"| real images (nearest other) | - | {100 * base_agree:.1f}% |")
    for r in rows:
        print(
            f"| {r['temperature']:g} | {r['rms_to_source']:.3f} | {100 * r['nearest_real_same_label']:.1f}% |"
        )
    if args.out:
        sources = torch.tensor([int((y == c).nonzero()[0]) for c in range(min(args.rows, int(y.max()) + 1))])
        grid = [x[sources].unsqueeze(1)]
        for t in args.temperatures:
            aug = ExemplarAugmenter(
                model, args.per_row, t, "rounded", torch.Generator().manual_seed(args.seed)
            )
            grid.append(aug(x[sources])[0].reshape(len(sources), args.per_row, -1))
        save_image_grid(torch.cat(grid, 1), model.image_shape, args.out)
        print(
            f"\npicture: {args.out} (each row: the source, then {args.per_row} augmentations at T = "
            + ", ".join(f"{t:g}" for t in args.temperatures)
            + ")"
        )


if __name__ == "__main__":
    main()
