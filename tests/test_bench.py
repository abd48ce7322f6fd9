"""The benchmark's helpers at tiny size on digits, so that ``make bench`` cannot rot (no timing asserted)."""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from exemplar_vae import PriorConfig, load_dataset

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_dir() -> Iterator[None]:
    """benchmarks/ first on sys.path while this file runs, as when the script runs (its modules import
    each other as siblings); they leave sys.modules afterwards, their names being generic."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCH_DIR))
        yield
    for name, module in list(sys.modules.items()):
        if Path(getattr(module, "__file__", None) or "/").parent == BENCH_DIR:
            del sys.modules[name]


@pytest.fixture(scope="module")
def bench(bench_dir: None) -> ModuleType:
    """The entry point (argument parsing and orchestration)."""
    return importlib.import_module("bench_train_eval")


@pytest.fixture(scope="module")
def common_mod(bench_dir: None) -> ModuleType:
    return importlib.import_module("common")


@pytest.fixture(scope="module")
def rates_mod(bench_dir: None) -> ModuleType:
    return importlib.import_module("rates")


@pytest.fixture(scope="module")
def train_mod(bench_dir: None) -> ModuleType:
    return importlib.import_module("train_rows")


@pytest.fixture(scope="module")
def eval_mod(bench_dir: None) -> ModuleType:
    return importlib.import_module("eval_rows")


@pytest.fixture(scope="module")
def report_mod(bench_dir: None) -> ModuleType:
    return importlib.import_module("report")


@pytest.fixture(scope="module")
def memory_mod(bench_dir: None) -> ModuleType:
    return importlib.import_module("memory")


@pytest.fixture(scope="module")
def digits():  # noqa: ANN201
    return load_dataset("digits")


def test_flop_counts_follow_the_linear_layers(rates_mod) -> None:  # noqa: ANN001
    net = torch.nn.Sequential(torch.nn.Linear(40, 300), torch.nn.ReLU(), torch.nn.Linear(300, 784))
    assert rates_mod.linear_flops(net) == 2 * (40 * 300 + 300 * 784)
    assert rates_mod.linear_flops(net, (net[2],)) == 2 * 40 * 300
    assert rates_mod.matmul_rate([(64, 32, 16)], repeats=1) > 0


def test_product_shapes_fuse_each_gated_layer_as_the_model_runs_it(rates_mod) -> None:  # noqa: ANN001
    from exemplar_vae.models.decoders import MLPDecoder

    dec = MLPDecoder(40, 300, 784)
    shapes = rates_mod.product_shapes(dec, 7)
    assert shapes == [(7, 40, 600), (7, 300, 600), (7, 300, 784)]
    assert sum(2 * k * n for _, k, n in shapes) == rates_mod.linear_flops(dec)  # same FLOPs, fewer products


def test_quick_helpers_on_digits(
    bench, common_mod, rates_mod, train_mod, eval_mod, report_mod, digits
) -> None:  # noqa: ANN001
    args = bench.parse_args(["--quick", "--dataset", "digits", "--no-memory", "--run", "none"])
    assert args.samples == 50 and args.run is None
    model, _ = common_mod.fresh_model(PriorConfig("gaussian"), args, digits)
    rates = rates_mod.measure_rates(model, args.chunk_rows, args.square, digits.data_dim, args.candidates)
    assert (
        rates.softplus_ns > 0 and rates.exp_ns > 0 and rates.encoder_mean_layers == rates.encoder_layers[:-1]
    )
    assert rates.decoder_flops > 0 and rates.encoder_mean_flops < rates.encoder_flops
    priors = [
        (PriorConfig("gaussian"), 3, "off"),
        (PriorConfig("exemplar", exemplars=500, knn=5), 3, "off"),
        (PriorConfig("exemplar", exemplars=500, knn=5, search="ivf", nprobe=4), 3, "off"),
        (PriorConfig("exemplar", exemplars=500, knn=0), 1, "off"),  # fewer steps than rounds
        (PriorConfig("exemplar", exemplars=500, knn=0, grad_tolerance=1e-3), 1, "off"),
    ]
    rows = train_mod.bench_training(priors, args, digits, rates)  # 2 rounds, interleaved
    gauss, row, ivf, exact, sparse, official, official_exact = rows
    # samples: at start, after preparation (round 1 starts), after round 1, after round 2
    samples = rates.decoder_samples
    assert len(samples) == 4 and rates.round_rates == [max(samples[1:3]), max(samples[2:4])]
    assert rates.decoder_gflops == max(rates.decoder_samples)
    assert [len(r.step_s) for r in rows] == [3, 3, 3, 1, 1, 2, 1] and row.step_round == [0, 0, 1]
    assert exact.step_round == [0] and sorted(row.products_s) == [0, 1] and sorted(exact.products_s) == [0]
    shapes = rates_mod.step_products(row, rates, 100)
    # forward + backward = 3x forward, less the first encoder layer's input gradient of both encoder passes
    first = 2 * rates.encoder_layers[0][0] * rates.encoder_layers[0][1]
    assert sum(2 * m * k * n for m, k, n in shapes) == rates_mod.step_floor_flops(row, rates, 100) - first * (
        100 + row.union
    )
    assert row.union is not None and 0 < row.union <= 100 * 6
    assert row.search_s is not None and row.validate_s is not None
    assert ivf.recall is not None and 0.0 < ivf.recall <= 1.0 and ivf.index_s is not None
    assert official.union is not None and 0 < official.union <= 100 * 10
    assert train_mod.paired_ratio(official, row) > 0
    lines = report_mod.training_report(rows, rates, args, digits)
    assert any(line.startswith("| exemplar, exact search | 5 |") for line in lines)
    assert any(line.startswith("| exemplar, ivf search (nprobe 4) | 5 |") for line in lines)
    assert any(line.startswith("| official-code style | 10 |") for line in lines)
    assert any("its step divided by ours" in line for line in lines)
    assert any(line.startswith("IVF search") and "recall" in line for line in lines)
    assert official_exact.prior.knn == 0 and official_exact.union == official_exact.prior.exemplars
    assert sparse.union is not None and 0 < sparse.union <= 500  # the mass-carrying exemplars of a step
    assert any("gradient tolerance 0.001" in line and "official-style exact step" in line for line in lines)

    eval_model, label = eval_mod.evaluation_model(args, digits)
    res = eval_mod.bench_evaluation(eval_model, label, args, digits, rates)
    assert len(rates.decoder_samples) == 6 and res.local_gflops == max(rates.decoder_samples[4:6])
    assert res.points == args.eval_points and res.check_mean_error >= -1e-5
    assert all(math.isfinite(v) for v in res.official_ll)
    assert 0.0 <= res.certified["fraction_below_0.01"] <= 1.0
    report = "\n".join(report_mod.evaluation_report(res, rates, args, digits))
    assert (
        "official-code style" in report
        and "decoder-FLOP floor" in report
        and "just before and after" in report
    )
    assert any(line.startswith("| exemplar, exact search | 5 |") and line.count("|") == 15 for line in lines)


def test_memory_job_reports_peak_rss(bench, memory_mod) -> None:  # noqa: ANN001
    args = bench.parse_args(["--quick", "--dataset", "digits", "--run", "none"])
    out = memory_mod.memory_job("eval", args)
    assert out["job"] == "eval" and out["max_rss_mib"] > 10


def test_unsteady_runs_are_flagged(rates_mod, report_mod) -> None:  # noqa: ANN001
    import argparse

    args = argparse.Namespace(square=2048, chunk_rows=4000)
    steady = rates_mod.Rates(100.0, [], [100.0, 90.0], 1, 1, 1, [], [], 1.0, 1.0)
    unsteady = rates_mod.Rates(100.0, [], [100.0, 70.0, 95.0], 1, 1, 1, [], [], 1.0, 1.0)
    assert not any("warning" in line for line in report_mod.rates_report(steady, args))
    assert any("varied 1.43x" in line for line in report_mod.rates_report(unsteady, args))
