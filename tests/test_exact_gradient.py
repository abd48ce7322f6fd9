"""The exact exemplar prior with the encoder's gradient only through the exemplars that carry the mass
(``PriorConfig.grad_tolerance``, ``ExemplarPrior.exact_log_prob_sparse_grad``).

Against a float64 brute force (a float64 copy of the encoder, direct differences, an explicit
leave-one-out mask, torch autograd for the gradients): the value is the exact prior's; with tolerance 0
every gradient is the exact one; with tolerance > 0 the gradient is the exact gradient of the mixture in
which only the codes of the exemplars left out of the union are held fixed, its error is small, and the
responsibility dropped per point is at most the tolerance. The selection is checked against a brute force
over all subsets, ties included.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from exemplar_vae import DataConfig, ModelConfig, PriorConfig, RunConfig, TrainConfig
from exemplar_vae.cli.main import main
from exemplar_vae.errors import ConfigError
from exemplar_vae.functional import mass_carrying_components, responsibilities
from exemplar_vae.models.encoders import MLPEncoder
from exemplar_vae.pipeline import train
from exemplar_vae.priors import ExemplarPrior
from exemplar_vae.validation import validate

N, DATA_DIM, HIDDEN, LATENT, M, B = 60, 6, 16, 3, 30, 12


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def setup(
    tol: float | None, loo: bool = True, log_var: float = -1.5, seed: int = 0
) -> tuple[MLPEncoder, ExemplarPrior, Tensor, Tensor, Tensor]:
    """An encoder, an exact exemplar prior (M = 30 of N = 60) with gradient tolerance ``tol``, a subset
    [M], dataset indices [B] (four of them inside the subset) and codes z [B, d] near their exemplars."""
    torch.manual_seed(seed)
    encoder = MLPEncoder(DATA_DIM, HIDDEN, LATENT)
    exemplars = torch.randn(N, DATA_DIM, generator=gen(seed + 1))  # [N, D]
    prior = ExemplarPrior(
        exemplars, LATENT, num_exemplars=M, knn=0, leave_one_out=loo, search_backend="torch",
        grad_tolerance=tol,
    )  # fmt: skip
    with torch.no_grad():
        prior.log_var.fill_(log_var)
    prior.train()
    g = gen(seed + 2)
    subset = prior.draw_subset(g).members()  # [M]
    index = torch.randint(N, (B,), generator=g)  # [B]
    index[:4] = subset[:4]
    with torch.no_grad():
        z = encoder.mean(exemplars[index]) + 0.5 * torch.randn(B, LATENT, generator=g)  # [B, d]
    return encoder, prior, subset, index, z


def reference_log_kernel(
    z: Tensor, codes: Tensor, log_var: Tensor, index: Tensor | None, ids: Tensor
) -> tuple[Tensor, Tensor]:
    """log N(z_b; c_m, sigma^2 I) in float64 by direct differences, a point's own exemplar at -inf:
    [B, d], [M, d] -> ([B, M] log kernel, [B, M] True where the exemplar is the point itself)."""
    d = z.shape[1]
    sq = ((z.double().unsqueeze(1) - codes.double().unsqueeze(0)) ** 2).sum(-1)  # [B, M]
    log_k = -0.5 * d * (math.log(2 * math.pi) + log_var) - 0.5 * sq / torch.exp(log_var)  # [B, M]
    own = torch.zeros_like(sq, dtype=torch.bool)
    if index is not None:
        own = index.unsqueeze(1) == ids.unsqueeze(0)  # [B, M]
    return log_k.masked_fill(own, float("-inf")), own


def reference_log_prob(
    z: Tensor, codes: Tensor, log_var: Tensor, index: Tensor | None, ids: Tensor
) -> Tensor:
    """log (1/n_b) sum_m N(z_b; c_m, sigma^2 I), each point's own exemplar left out and n_b the exemplars
    left: [B, d], [M, d] -> [B] float64."""
    log_k, own = reference_log_kernel(z, codes, log_var, index, ids)
    return torch.logsumexp(log_k, -1) - torch.log((~own).sum(-1).double())


def reference_gradients(
    encoder: MLPEncoder,
    prior: ExemplarPrior,
    z: Tensor,
    index: Tensor | None,
    subset: Tensor,
    fixed: Tensor | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """The float64 value [B] and the gradients of -sum_b log p(z_b) for z, log sigma^2 and every encoder
    parameter; the codes of the subset positions ``fixed`` are held constant (detached)."""
    enc64 = copy.deepcopy(encoder).double()
    z64 = z.detach().double().requires_grad_(True)
    log_var = prior.log_var.detach().double().requires_grad_(True)
    codes = enc64.mean(prior.exemplars[subset].double())  # [M, d]
    if fixed is not None and fixed.numel():
        held = torch.zeros(subset.shape[0], 1, dtype=torch.bool)
        held[fixed] = True
        codes = torch.where(held, codes.detach(), codes)
    value = reference_log_prob(z64, codes, log_var, index, subset)
    (-value.sum()).backward()
    grads = [z64.grad, log_var.grad] + [
        p.grad if p.grad is not None else torch.zeros_like(p) for p in enc64.parameters()
    ]
    return value.detach(), [g.detach() for g in grads]  # type: ignore[union-attr]


def our_gradients(
    encoder: MLPEncoder,
    prior: ExemplarPrior,
    z: Tensor,
    index: Tensor | None,
    subset: Tensor,
    tol: float | None,
) -> tuple[Tensor, list[Tensor], Tensor | None]:
    """The prior's value [B], the gradients (as ``reference_gradients``) and the union J it re-encoded."""
    unions: list[Tensor] = []
    find = prior.mass_carrying_union

    def recorded(resp: Tensor, tolerance: float) -> tuple[Tensor, Tensor]:
        out = find(resp, tolerance)
        unions.append(out[0])
        return out

    prior.mass_carrying_union = recorded  # type: ignore[method-assign]
    encoder.zero_grad()
    prior.zero_grad()
    zz = z.detach().clone().requires_grad_(True)
    if tol is None:
        value = prior.exact_log_prob(zz, encoder, index, subset)
    else:
        value = prior.exact_log_prob_sparse_grad(zz, encoder, index, subset, tol)
    (-value.sum()).backward()
    del prior.mass_carrying_union
    grads = [zz.grad, prior.log_var.grad] + [
        p.grad if p.grad is not None else torch.zeros_like(p) for p in encoder.parameters()
    ]
    return value.detach(), [g.detach() for g in grads], unions[0] if unions else None  # type: ignore[union-attr]


def relative_error(a: list[Tensor], b: list[Tensor]) -> float:
    """||a - b|| / ||b|| over a list of tensors taken as one vector."""
    num = sum(float((x.double() - y.double()).pow(2).sum()) for x, y in zip(a, b, strict=True))
    den = sum(float(y.double().pow(2).sum()) for y in b)
    return math.sqrt(num / den)


# -- the value and the gradients ------------------------------------------------------------------------
@pytest.mark.parametrize("loo", [True, False])
@pytest.mark.parametrize("tol", [0.0, 1e-3, 0.2])
def test_value_is_the_exact_priors(tol: float, loo: bool) -> None:
    encoder, prior, subset, index, z = setup(tol, loo)
    value, _, _ = our_gradients(encoder, prior, z, index, subset, tol)
    exact = prior.exact_log_prob(z, encoder, index, subset).detach()
    ref, _ = reference_gradients(encoder, prior, z, index if loo else None, subset)
    assert_close(value, exact, rtol=1e-6, atol=1e-6)
    assert_close(value.double(), ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # no gradient wanted: nothing is re-encoded, same value
        assert_close(
            prior.exact_log_prob_sparse_grad(z, encoder, index, subset, tol), exact, rtol=1e-6, atol=1e-6
        )


@pytest.mark.parametrize("loo", [True, False])
def test_tolerance_zero_gives_every_gradient_of_the_exact_prior(loo: bool) -> None:
    encoder, prior, subset, index, z = setup(0.0, loo)
    _, ours, union = our_gradients(encoder, prior, z, index, subset, 0.0)
    _, exact, _ = our_gradients(encoder, prior, z, index, subset, None)
    _, ref = reference_gradients(encoder, prior, z, index if loo else None, subset)
    assert union is not None and union.numel() == M  # every exemplar has some responsibility
    for a, b, r in zip(ours, exact, ref, strict=True):
        assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert_close(a.double(), r, rtol=1e-4, atol=1e-5)
    assert prior.extra_metrics()["grad_neglected_mass"] == 0.0


@pytest.mark.parametrize("tol", [1e-3, 1e-2, 0.2])
def test_positive_tolerance_leaves_out_only_the_dropped_exemplars(tol: float) -> None:
    """Narrow kernels (log sigma^2 = -3) so that most exemplars carry almost nothing: J < M."""
    encoder, prior, subset, index, z = setup(tol, log_var=-3.0, seed=3)
    _, ours, union = our_gradients(encoder, prior, z, index, subset, tol)
    assert union is not None
    assert 0 < union.numel() < M
    dropped = torch.tensor(sorted(set(range(M)) - set(union.tolist())), dtype=torch.int64)
    _, exact = reference_gradients(encoder, prior, z, index, subset)
    _, surrogate = reference_gradients(encoder, prior, z, index, subset, fixed=dropped)
    for a, s in zip(ours, surrogate, strict=True):  # exactly the mixture with the dropped codes held fixed
        assert_close(a.double(), s, rtol=1e-4, atol=1e-5)
    assert_close(ours[0].double(), exact[0], rtol=1e-4, atol=1e-5)  # z: exact
    assert_close(ours[1].double(), exact[1], rtol=1e-4, atol=1e-5)  # log sigma^2: exact
    error = relative_error(ours[2:], exact[2:])
    assert 0 < error < 10 * tol, error

    # the neglected mass: each point's largest dropped responsibility, by brute force in float64
    metrics = prior.extra_metrics()
    assert metrics["grad_exemplars"] == union.numel()
    codes = copy.deepcopy(encoder).double().mean(prior.exemplars[subset].double()).detach()  # [M, d]
    log_k, _ = reference_log_kernel(z, codes, prior.log_var.detach().double(), index, subset)
    resp = torch.softmax(log_k, -1)  # [B, M], a point's own exemplar at 0
    neglected = float(resp[:, dropped].sum(-1).max())
    assert neglected <= metrics["grad_neglected_mass"] * (1 + 1e-6) + 1e-12  # J may keep more for others
    assert metrics["grad_neglected_mass"] <= tol


def test_a_points_own_exemplar_never_counts() -> None:
    """A point sitting on its own exemplar's code with a narrow kernel: without leave-one-out its own
    exemplar would carry all its mass; with it, it carries none and is not re-encoded for it."""
    encoder, prior, subset, _, _ = setup(0.5, log_var=-8.0)
    index = subset[:1]  # [1] a point inside the subset
    with torch.no_grad():
        z = encoder.mean(prior.exemplars[index])  # [1, d] exactly on its own code
    value, _, union = our_gradients(encoder, prior, z, index, subset, 0.5)
    assert union is not None and 0 not in union.tolist()  # subset position 0 is the point itself
    ref, _ = reference_gradients(encoder, prior, z, index, subset)
    assert torch.isfinite(value).all()
    assert_close(value.double(), ref, rtol=1e-5, atol=1e-3)
    resp = responsibilities(torch.zeros(1, M, dtype=torch.float64), index.unsqueeze(1) == subset.unsqueeze(0))
    assert resp[0, 0] == 0 and float(resp.sum()) == pytest.approx(1.0)


# -- the pure functions ---------------------------------------------------------------------------------
def test_responsibilities_are_the_masked_softmax() -> None:
    g = gen(5)
    log_k = 30 * torch.randn(6, 9, generator=g, dtype=torch.float64)
    mask = torch.rand(6, 9, generator=g) < 0.3
    mask[2] = True  # a row with nothing left
    r = responsibilities(log_k, mask)
    for b in range(6):
        kept = [k for k in range(9) if not mask[b, k]]
        expect = torch.zeros(9, dtype=torch.float64)
        if kept:
            w = torch.tensor(
                [math.exp(float(log_k[b, k] - log_k[b, kept].max())) for k in kept], dtype=torch.float64
            )
            expect[kept] = w / w.sum()
        assert_close(r[b], expect, rtol=1e-12, atol=1e-15)


def brute_force_size(row: list[float], tol: float) -> int:
    """The fewest entries whose complement sums to at most ``tol``, over every subset."""
    k = len(row)
    for size in range(k + 1):
        for keep in itertools.combinations(range(k), size):
            if sum(row[j] for j in range(k) if j not in keep) <= tol:
                return size
    raise AssertionError("unreachable: keeping everything drops 0")


@pytest.mark.parametrize("tol", [0.0, 1 / 16, 0.125, 0.25, 0.3, 0.5, 0.9375])
def test_selection_keeps_the_smallest_set_reaching_one_minus_tol(tol: float) -> None:
    """Dyadic entries (multiples of 1/16, exact sums) with many ties, zeros (masked entries) and an all-zero
    row; every row against a brute force over all subsets."""
    g = gen(6)
    rows = []
    for _ in range(40):
        counts = torch.randint(0, 4, (7,), generator=g).tolist()  # small integers: ties
        total = sum(counts)
        if total == 0:
            counts[0], total = 1, 1
        # scale to sum 1 with dyadic values: pick a power-of-two total by padding the last entry
        scale = 16
        while scale < total:
            scale *= 2
        counts[-1] += scale - total
        rows.append([c / scale for c in counts])
    rows.append([0.25] * 4 + [0.0] * 3)  # exact ties at the boundary
    rows.append([0.0] * 7)  # a point with nothing left
    resp = torch.tensor(rows, dtype=torch.float64)
    keep, dropped = mass_carrying_components(resp, tol)
    for b, row in enumerate(rows):
        kept = keep[b].tolist()
        assert sum(kept) == brute_force_size(row, tol), (row, kept)
        lost = sum(v for v, k in zip(row, kept, strict=True) if not k)
        assert float(dropped[b]) == lost and lost <= tol
        if any(kept) and not all(kept):  # a top set: nothing dropped outranks anything kept
            assert max(v for v, k in zip(row, kept, strict=True) if not k) <= min(
                v for v, k in zip(row, kept, strict=True) if k
            )
        assert not any(k and v == 0 for v, k in zip(row, kept, strict=True))  # masked entries never kept


def test_selection_on_real_responsibilities_matches_a_full_sort() -> None:
    g = gen(7)
    resp = torch.softmax(8 * torch.randn(20, 500, generator=g, dtype=torch.float64), -1)
    for tol in (0.0, 1e-6, 1e-3, 0.1):
        keep, dropped = mass_carrying_components(resp, tol)
        ranked, _ = resp.sort(-1, descending=True)
        for b in range(20):
            tail = [math.fsum(ranked[b, j:].tolist()) for j in range(501)]  # exactly rounded sums
            n = next(j for j in range(501) if tail[j] <= tol)
            assert int(keep[b].sum()) == n
            assert float(dropped[b]) == pytest.approx(float(resp[b][~keep[b]].sum()), rel=1e-12, abs=1e-300)
            assert float(dropped[b]) <= tol * (1 + 1e-12)


# -- training ------------------------------------------------------------------------------------------
def digits_config(tol: float | None) -> RunConfig:
    return RunConfig(
        data=DataConfig(dataset="digits"),
        model=ModelConfig(hidden=16, latent_dim=4),
        prior=PriorConfig(name="exemplar", knn=0, exemplars=200, grad_tolerance=tol),
        train=TrainConfig(epochs=1, warmup=1, early_stopping=0, seed=3, device="cpu"),
    )


def test_training_with_the_option_logs_its_metrics_and_tolerance_zero_matches_the_exact_run() -> None:
    models, histories = {}, {}
    for tol in (None, 0.0, 1e-3):
        model, result = train(digits_config(tol), None, progress=False)
        models[tol], histories[tol] = model, result.history
    last = histories[1e-3][-1]
    assert 0 <= last["grad_neglected_mass"] <= 1e-3
    assert 1 <= last["grad_exemplars"] <= 200
    assert math.isfinite(last["val_loss"])
    assert "grad_exemplars" not in histories[None][-1]
    assert histories[0.0][-1]["grad_neglected_mass"] == 0.0
    exact, zero = models[None].state_dict(), models[0.0].state_dict()
    for name in exact:  # the same gradients: the same weights after an epoch, to rounding
        assert_close(zero[name], exact[name], rtol=1e-4, atol=1e-5, msg=name)


# -- configuration ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prior", "match"),
    [
        ({"knn": 0, "grad_tolerance": -0.1}, r"--grad-tolerance must be in \[0, 1\).*got -0.1"),
        ({"knn": 0, "grad_tolerance": 1.0}, r"--grad-tolerance must be in \[0, 1\).*got 1.0"),
        ({"knn": 0, "grad_tolerance": float("nan")}, r"--grad-tolerance must be in \[0, 1\).*got nan"),
        ({"knn": 10, "grad_tolerance": 1e-3}, r"--grad-tolerance applies to the exact prior \(--knn 0\)"),
        ({"grad_tolerance": 1e-3}, r"--grad-tolerance applies to the exact prior"),
        (
            {"name": "gaussian", "grad_tolerance": 1e-3},
            r"--grad-tolerance is the exact exemplar prior's.*'gaussian'",
        ),
        ({"name": "vampprior", "knn": 0, "grad_tolerance": 0.0}, r"--grad-tolerance .*'vampprior'"),
    ],
)
def test_bad_tolerances_and_other_priors_are_refused_in_one_line(prior: dict[str, Any], match: str) -> None:
    config = RunConfig(prior=dataclasses.replace(PriorConfig(), **prior))
    with pytest.raises(ConfigError, match=match) as err:
        validate(config)
    assert "\n" not in str(err.value)


def test_the_prior_itself_refuses_a_tolerance_with_retrieval() -> None:
    with pytest.raises(ConfigError, match="--grad-tolerance applies to the exact prior"):
        ExemplarPrior(torch.rand(10, 4), 2, num_exemplars=5, knn=3, grad_tolerance=0.01)


def test_cli_flag_and_old_configs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate(RunConfig(prior=PriorConfig(knn=0, grad_tolerance=0.0))).prior.grad_tolerance == 0.0
    old = RunConfig().to_dict()
    del old["prior"]["grad_tolerance"]  # a config.json written before the option existed
    assert RunConfig.from_dict(old).prior.grad_tolerance is None
    assert main(["-q", "train", "--out", str(tmp_path / "r"), "--grad-tolerance", "0.001"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --grad-tolerance applies to the exact prior") and err.count("\n") == 1
    assert not (tmp_path / "r" / "config.json").exists()


def test_the_tolerance_can_be_switched_on_and_off_at_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--resume --grad-tolerance 1e-3`` switches the option on part-way, ``--grad-tolerance off`` back to
    all M with gradient; the checkpoint's config records the change and a bad value is refused in one line."""
    out = tmp_path / "r"
    base = ["-q", "train", "--dataset", "digits", "--hidden", "16", "--latent-dim", "4", "--knn", "0",
            "--exemplars", "200", "--epochs", "3", "--warmup", "1", "--early-stopping", "0", "--out", str(out)]  # fmt: skip

    resume = ["-q", "train", "--out", str(out), "--resume"]

    def run(*args: str) -> list[dict[str, Any]]:
        assert main(list(args)) == 0
        capsys.readouterr()
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [r for r in records if "train_loss" in r]

    first = run(*base, "--epochs", "1")
    assert "grad_exemplars" not in first[-1]
    on = run(*resume, "--epochs", "2", "--grad-tolerance", "1e-3")
    assert 1 <= on[-1]["grad_exemplars"] <= 200 and on[-1]["grad_neglected_mass"] <= 1e-3
    assert json.loads((out / "config.json").read_text())["prior"]["grad_tolerance"] == 1e-3
    off = run(*resume, "--epochs", "3", "--grad-tolerance", "off")
    assert len(off) == 3 and "grad_exemplars" not in off[-1]
    assert json.loads((out / "config.json").read_text())["prior"]["grad_tolerance"] is None
    with pytest.raises(SystemExit) as exit_:  # argparse: the usage line, then the error
        main([*resume, "--grad-tolerance", "tiny"])
    assert exit_.value.code == 2
    assert "argument --grad-tolerance: expected a number or off, got 'tiny'" in capsys.readouterr().err


def test_off_switches_only_the_tolerance_off() -> None:
    """``--grad-tolerance off`` is None in the config; "off" stays the plain value of --compile and --amp."""
    from exemplar_vae.cli.main import build_parser, config_from_args

    args = ["train", "--out", "x", "--knn", "0", "--compile", "off", "--amp", "off", "--grad-tolerance"]
    config = config_from_args(build_parser().parse_args([*args, "off"]))
    assert config.prior.grad_tolerance is None
    assert config.train.compile == "off" and config.train.amp == "off"
    validate(config)
    assert config_from_args(build_parser().parse_args([*args, "0.01"])).prior.grad_tolerance == 0.01


# -- two processes ---------------------------------------------------------------------------------------
WORKER = Path(__file__).with_name("exact_gradient_worker.py")


def test_two_processes_compute_what_one_process_computes(tmp_path: Path) -> None:
    """A torchrun launch of two gloo processes (the path `train` takes), each with its share of the batch."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs torch.distributed with gloo")
    out = tmp_path / "two.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run([*run, str(WORKER), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(f"{out}{r}", weights_only=False) for r in range(2)]
    encoder, prior, subset, index, z = setup(0.01, log_var=-3.0, seed=3)
    _, one, union = our_gradients(encoder, prior, z, index, subset, 0.01)
    metrics = prior.extra_metrics()
    assert union is not None and 0 < union.numel() < M
    for two in ranks:
        assert two["union"].tolist() == union.tolist()  # the same union on every rank
        assert two["metrics"]["grad_exemplars"] == metrics["grad_exemplars"]
        assert two["metrics"]["grad_neglected_mass"] == pytest.approx(
            metrics["grad_neglected_mass"], rel=1e-9
        )
        assert_close(two["grads"][0], one[0][two["rows"]], rtol=1e-5, atol=1e-6)  # z: each rank its rows
        for a, b in zip(two["grads"][1:], one[1:], strict=True):
            assert_close(a, b, rtol=1e-5, atol=1e-6)
