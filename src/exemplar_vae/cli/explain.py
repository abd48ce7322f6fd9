"""``exemplar-vae neighbours``: the exemplars that carry most of the prior mass of a user's images.

parse -> ``neighbours`` (load the run, read the images, ``generation.explain``) -> one PNG (a row per
image: the image, then its k exemplars, largest responsibility first), a JSON sidecar next to it with the
ids and responsibilities, and one line per image on stdout.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from exemplar_vae.errors import ConfigError
from exemplar_vae.generation.explain import explain, explanation_grid, read_images
from exemplar_vae.io import atomic_write_json
from exemplar_vae.runs import load_run
from exemplar_vae.viz import save_image_grid


def sidecar_path(out: Path) -> Path:
    """The JSON written next to the PNG: ``OUT`` with the suffix ``.json`` (``nb.png`` -> ``nb.json``)."""
    return out.with_suffix(".json")


def neighbours(
    run_dir: str | Path,
    images: list[Path],
    out: str | Path,
    k: int = 8,
    device: str = "auto",
    checkpoint: str = "best",
    extra_exemplars: str | Path | None = None,
) -> dict[str, Any]:
    """Explain image files with a run's exemplars; writes ``out`` (PNG) and its JSON sidecar.

    Args:
        run_dir: a run folder of an exemplar-prior model.
        images: image files of the model's size (grey for one-channel models); values are pixel / 255.
        out: the PNG to write.
        k: exemplars per image, 1 <= k <= N.
        device: where to run the model.
        checkpoint: "best" or "last".
        extra_exemplars: an ``.npz`` file whose images (array ``x``) join the exemplar set first
            (``--extra-exemplars``).

    Returns:
        The JSON document written to the sidecar: per image its file, the k exemplar ids (rows of the
        exemplar set: training images first, then the extra ones), their responsibilities, labels and
        sources, and the mass they carry.

    Raises:
        ConfigError: a bad ``--out``/``--k``, or a model whose prior has no exemplar set.
        DataError: an unreadable image, or one whose size is not the model's.
    """
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must be a .png file, got '{out}'")
    if k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}")
    model, data, config = load_run(
        run_dir, checkpoint=checkpoint, device=device, extra_exemplars=extra_exemplars
    )
    if model.prior.exemplar_set() is None:
        raise ConfigError(
            f"{run_dir} uses the '{config.prior.name}' prior, which has no exemplar set: neighbours needs a "
            "run trained with the exemplar prior"
        )
    x = read_images(images, model.image_shape)  # [B, D]
    result = explain(model, x, k)
    save_image_grid(explanation_grid(model, x, result), model.image_shape, out)
    labels = data.train_y.tolist()
    rows = []
    for path, ids, resp, mass in zip(
        images, result.ids.tolist(), result.responsibilities.tolist(), result.mass.tolist()
    ):
        rows.append(
            {
                "image": str(path),
                "mass": mass,
                "exemplars": [
                    {
                        "id": i,
                        "responsibility": r,
                        "source": "train" if i < data.num_train else "extra",
                        "label": labels[i] if i < data.num_train else -1,
                    }
                    for i, r in zip(ids, resp)
                ],
            }
        )
    mixture = model.prior.kernel_mixture()
    assert mixture is not None  # explain() refused a prior without a kernel mixture
    doc: dict[str, Any] = {
        "run_dir": str(run_dir),
        "checkpoint": checkpoint,
        "png": str(out),
        "k": k,
        "num_exemplars": int(mixture.centers.shape[0]),
        "train_exemplars": data.num_train,
        "prior_log_var": float(mixture.log_var),
        "images": rows,
    }
    atomic_write_json(sidecar_path(out), doc)
    return doc


def caption(row: dict[str, Any]) -> str:
    """One stdout line for one image: its file, the mass, then ``#id [label] responsibility`` per exemplar
    (``#id (extra)`` for an exemplar from ``--extra-exemplars``)."""
    parts = []
    for e in row["exemplars"]:
        tag = f"#{e['id']}" + (f" [{e['label']}]" if e["label"] >= 0 else "")
        tag += " (extra)" if e["source"] == "extra" else ""
        parts.append(f"{tag} {e['responsibility']:.3g}")
    head = f"{row['image']}: {row['mass']:.3f} of the prior mass in {len(parts)} exemplars"
    return f"{head}: {', '.join(parts)}"


def add_parsers(sub: Any) -> None:
    """Add the ``neighbours`` subcommand to the CLI's subparsers."""
    p = sub.add_parser(
        "neighbours",
        help="the exemplars that carry most of the prior mass of each given image (PNG + JSON)",
        description="Encode each image (its encoder mean mu), compute the responsibilities "
        "r_n = N(mu; mu(x_n), sigma^2 I) / sum_m N(mu; mu(x_m), sigma^2 I) over all N exemplars of a run's "
        "exemplar prior (exactly, in float64) and show the k largest: a PNG with a row per image (the image, "
        "then its exemplars, largest first), a JSON sidecar (OUT with suffix .json) with the ids, labels and "
        "responsibilities, and one line per image on stdout. Images must have the model's size (no "
        "resizing); they are converted to grey for one-channel models and scaled by 1/255.",
    )
    p.add_argument("run_dir", type=Path, help="run folder of an exemplar-prior model")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="PNG/JPEG files of the model's size")
    p.add_argument("--out", required=True, type=Path, help="PNG file to write (the JSON goes next to it)")
    p.add_argument("--k", type=int, default=8, help="exemplars per image (default 8)")
    p.add_argument(
        "--extra-exemplars", type=Path, default=None, metavar="EXTRA.npz",
        help="add the images (array x) of this .npz file to the exemplar set first (their ids follow the "
        "training set's)",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint", choices=("best", "last"), default="best", help="model to load (default best)"
    )
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N")


def cmd_neighbours(args: argparse.Namespace) -> int:
    doc = neighbours(
        args.run_dir, list(args.images), args.out, args.k, args.device, args.checkpoint, args.extra_exemplars
    )
    for row in doc["images"]:
        print(caption(row))
    print(f"wrote {doc['png']} and {sidecar_path(Path(doc['png']))}")
    return 0


COMMANDS = {"neighbours": cmd_neighbours}
