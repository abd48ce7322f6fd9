"""Compiled evaluation: the compiled decoder terms against the eager ones (both likelihoods), the whole
evaluation compiled vs eager on the same samples, that compiling is opt-in, and the fallbacks (no compiler, a
compiler that fails) that must give the eager result after one warning.

Tolerances: float32 sums of D log-likelihood terms in another order differ by a few float32 spacings of
the sum; per point we allow 1e-5 x |value| + 1e-3 nats (the measured differences are ~1e-4 nats)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from exemplar_vae import EvalConfig, ModelConfig, PriorConfig, compiling
from exemplar_vae.cli.main import main
from exemplar_vae.evaluation.density import decoder_terms, evaluate_density, point_log_likelihoods
from exemplar_vae.models.build import build_vae
from exemplar_vae.models.vae import VAE
from exemplar_vae.objectives.likelihood import chunk_terms_for
from exemplar_vae.runs import load_run

D, SHAPE = 16, (1, 4, 4)


def small_model(binary: bool, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    exemplars = torch.randint(0, 256, (64, D)).float() / 255
    if binary:
        exemplars = exemplars.round()
    model = build_vae(ModelConfig(hidden=24, latent_dim=4), PriorConfig(knn=3), exemplars, SHAPE, binary)
    return model.eval()


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a - b).abs() <= 1e-5 * b.abs() + 1e-3).all())


@pytest.mark.parametrize("binary", [True, False], ids=["bernoulli", "logistic"])
def test_compiled_decoder_terms_match_eager(binary: bool) -> None:
    model = small_model(binary)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (5, D), generator=g).float() / 255
    if binary:
        x = x.round()
    with torch.no_grad():
        mean, log_var = model.encode(x)
        eager = chunk_terms_for(model)
        fast = compiling.Compiled(eager, "test terms", True, torch.device("cpu"))
        for s in (7, 3):  # a second shape: recompiled (or a dynamic graph), still the same values
            eps = torch.randn((s, 5, 4), generator=g)
            z0, base0 = eager(x, mean, log_var, eps, None)
            z1, base1 = fast(x, mean, log_var, eps, None)
            assert base1.dtype == torch.float64 and base1.shape == (s, 5)
            assert torch.allclose(z0, z1, atol=1e-6) and close(base1, base0)
    assert fast.used and fast.compilations >= 1 and fast.compile_seconds > 0
    assert fast.report()["used"] is True


def test_evaluation_compiled_equals_eager_on_the_same_samples(run_dir: Path) -> None:
    model, data, _ = load_run(run_dir)
    x = data.test_x[:12]
    settings = dict(samples=40, batch_size=5, candidates=20, check_exact=6)
    on = evaluate_density(model, x, EvalConfig(**settings, compile="on"), progress=False)  # type: ignore[arg-type]
    off = evaluate_density(model, x, EvalConfig(**settings, compile="off"), progress=False)  # type: ignore[arg-type]
    assert on["compile"]["used"] is True and on["compile"]["compilations"] >= 1
    assert off["compile"] == {"mode": "off", "used": False, "compile_seconds": 0.0, "compilations": 0}
    assert on["log_likelihood"] == pytest.approx(off["log_likelihood"], abs=1e-3)
    assert on["elbo"] == pytest.approx(off["elbo"], abs=1e-3)
    assert on["truncation_check"]["max_error"] == pytest.approx(
        off["truncation_check"]["max_error"], abs=1e-3
    )
    ll_on, _ = point_log_likelihoods(model, x, EvalConfig(**settings, compile="on"))  # type: ignore[arg-type]
    ll_off, _ = point_log_likelihoods(model, x, EvalConfig(**settings, compile="off"))  # type: ignore[arg-type]
    assert close(ll_on, ll_off)


def test_compiling_is_opt_in() -> None:
    model = small_model(True)
    assert EvalConfig().compile == "off" and not decoder_terms(model, EvalConfig()).used
    assert decoder_terms(model, EvalConfig(samples=1, compile="on")).used


def test_no_compiler_falls_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert "no C++ compiler" in (compiling.unavailable_reason(torch.device("cpu")) or "")
    fn = compiling.Compiled(lambda t: t + 1, "f", True, torch.device("cpu"))
    assert not fn.used and "no C++ compiler" in fn.report()["fallback"]
    assert torch.equal(fn(torch.zeros(2)), torch.ones(2))
    assert "not compiling f (no C++ compiler" in caplog.text


def test_a_failing_compiler_falls_back_to_the_eager_result(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(fn: object, **kwargs: object) -> object:
        def run(*args: object) -> object:
            raise RuntimeError("C++ compile error: cannot find -lgomp\nmore lines")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    caplog.set_level(logging.WARNING)
    fn = compiling.Compiled(lambda t: t * 2, "g", True, torch.device("cpu"))
    assert fn.used
    assert torch.equal(fn(torch.ones(3)), 2 * torch.ones(3))
    assert not fn.used and "cannot find -lgomp" in fn.report()["fallback"]
    assert caplog.text.count("not compiling g") == 1
    assert torch.equal(fn(torch.ones(3)), 2 * torch.ones(3))  # eager from now on, no new warning
    assert caplog.text.count("not compiling g") == 1


def test_compile_flag_is_checked(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(run_dir), "--compile", "sometimes", "--no-progress"])
    assert exit_.value.code == 2 and "argument --compile: invalid choice" in capsys.readouterr().err
    with pytest.raises(Exception, match="unknown --compile 'fast'"):
        evaluate_density(small_model(True), torch.zeros(2, D), EvalConfig(compile="fast"))


def test_compiled_training_step_matches_eager(tmp_path: Path) -> None:
    """A digits run with the step compiled gives the eager run's losses (same draws: the plan is made in
    the order the eager step draws) to float rounding, reports its compile time, and falls back to the
    eager loss for a custom objective."""
    from exemplar_vae import DataConfig, RunConfig, TrainConfig, load_dataset, train
    from exemplar_vae.objectives.elbo import CompiledElbo, elbo_terms
    from exemplar_vae.runs import build_model
    from exemplar_vae.training import Trainer

    def run(compile: str) -> list[dict]:
        config = RunConfig(
            data=DataConfig(dataset="digits", train_size=400),
            model=ModelConfig(hidden=16, latent_dim=4),
            prior=PriorConfig(knn=3, exemplars=200),
            train=TrainConfig(epochs=2, warmup=1, seed=0, device="cpu", compile=compile),
        )
        return train(config, tmp_path / compile, progress=False)[1].history

    eager, compiled = run("off"), run("on")
    for a, b in zip(eager, compiled, strict=True):
        for key in ("train_loss", "train_rec", "train_kl", "val_loss", "prior_log_var"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-4), key
    assert "compile_seconds" not in eager[0]
    assert compiled[0]["compiled"] is True and compiled[0]["compile_seconds"] > 0

    config = RunConfig(
        data=DataConfig(dataset="digits", train_size=400), model=ModelConfig(hidden=16, latent_dim=4),
        prior=PriorConfig(knn=3, exemplars=200), train=TrainConfig(epochs=1, device="cpu", compile="on"),
    )  # fmt: skip
    data = load_dataset("digits")
    model = build_model(config, data, "cpu")
    assert isinstance(Trainer(model, data, config, progress=False).step_loss, CompiledElbo)

    def custom(*args: object) -> object:
        return elbo_terms(*args)  # type: ignore[arg-type]

    trainer = Trainer(model, data, config, progress=False, loss=custom)  # type: ignore[arg-type]
    assert trainer.step_loss is custom and trainer.compile_report() is None
    default = RunConfig(data=config.data, model=config.model, prior=config.prior, train=TrainConfig(epochs=1))
    assert Trainer(model, data, default, progress=False).compile_report() is None  # opt-in


def test_train_compile_flag_is_checked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = [
        "train",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--compile",
        "fast",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(args) == 2
    assert "unknown --compile 'fast'" in capsys.readouterr().err
    assert main([*args[:-4], "--compile", "auto", "--out", str(tmp_path / "r")]) == 2  # on or off only
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "prior", [PriorConfig(knn=3), PriorConfig(knn=0, grad_tolerance=1e-3)], ids=["knn", "exact"]
)
def test_the_plan_is_made_in_full_precision_under_mixed_precision(prior: PriorConfig) -> None:
    """Under autocast the prior (its search, the mass-carrying choice) runs in float32 in ``elbo_terms``;
    the compiled step's plan must too, or its neighbours and its choice of exemplars would differ."""
    from exemplar_vae.objectives.elbo import CompiledElbo, elbo_terms

    torch.manual_seed(0)
    exemplars = torch.rand(400, 64).round()
    model = build_vae(
        ModelConfig(hidden=64, latent_dim=16),
        PriorConfig(name="exemplar", exemplars=300, knn=prior.knn, grad_tolerance=prior.grad_tolerance),
        exemplars, (1, 8, 8),
    )  # fmt: skip
    model.prior.searcher.backend = "torch"  # type: ignore[union-attr]
    with torch.no_grad():
        model.prior.log_var.fill_(-3.0)  # a narrow kernel: the choices depend on the codes' last digits
    model.train()
    model.prior.refresh(model.encoder)
    x, index = exemplars[:64], torch.arange(64)
    planned = CompiledElbo(model, enabled=False)  # the plan-then-score form, eagerly
    noise = model.draw_noise(64, torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = elbo_terms(model, x, index, 1.0, torch.Generator().manual_seed(2), noise)
        b = planned(model, x, index, 1.0, torch.Generator().manual_seed(2), noise)
    assert torch.equal(a.kl, b.kl) and torch.equal(a.rec, b.rec)


def test_real_failures_are_not_taken_for_compiler_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    from exemplar_vae.errors import DataError

    def bad(t: torch.Tensor) -> torch.Tensor:
        raise DataError("the inputs are wrong")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    fn = compiling.Compiled(bad, "h", True, torch.device("cpu"))
    with pytest.raises(DataError, match="the inputs are wrong"):
        fn(torch.ones(1))
    assert fn.used and "fallback" not in fn.report()


@pytest.mark.parametrize(
    ("prior", "reads"),
    [
        (PriorConfig(name="gaussian"), False),
        (PriorConfig(name="mog", components=5), False),
        (PriorConfig(name="vampprior", components=6, subsample=3), False),
        (PriorConfig(knn=0, exemplars=40), False),
        (PriorConfig(knn=3, exemplars=40), True),
        (PriorConfig(knn=0, exemplars=40, grad_tolerance=1e-3), True),
    ],
    ids=["gaussian", "mog", "vampprior-subsampled", "exact", "knn", "exact-tolerance"],
)
def test_the_planned_step_encodes_the_batch_again_only_when_the_plan_reads_codes(
    prior: PriorConfig, reads: bool
) -> None:
    """The plan-then-score step gives ``elbo_terms``' values exactly (same draws); it encodes the batch a
    second time, without gradient, only for a prior whose choices depend on the codes."""
    from exemplar_vae.objectives.elbo import CompiledElbo, elbo_terms

    torch.manual_seed(0)
    exemplars = torch.rand(64, D).round()
    model = build_vae(ModelConfig(hidden=24, latent_dim=4), prior, exemplars, SHAPE)
    model.train()
    model.prior.refresh(model.encoder)
    assert model.prior.plan_reads_codes is reads
    x, index = exemplars[:12], torch.arange(12)
    calls: list[int] = []
    model.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    noise = model.draw_noise(12, torch.Generator().manual_seed(1))
    a = elbo_terms(model, x, index, 0.5, torch.Generator().manual_seed(2), noise)
    eager_calls, calls[:] = list(calls), []
    b = CompiledElbo(model, enabled=False)(model, x, index, 0.5, torch.Generator().manual_seed(2), noise)
    assert torch.equal(a.kl, b.kl) and torch.equal(a.rec, b.rec) and torch.equal(a.loss, b.loss)
    assert calls.count(12) == eager_calls.count(12) + (1 if reads else 0)
    if reads:
        with pytest.raises(ValueError, match="pass them to plan"):
            model.prior.plan(None, model.encoder, index, None)


def test_a_prior_with_a_plan_of_its_own_is_taken_to_read_the_codes() -> None:
    """The safe default for a prior the package does not know: encode the batch for its plan."""
    from exemplar_vae.priors.gaussian import GaussianPrior

    class Planning(GaussianPrior):
        def plan(self, z, encoder, index, generator):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN201
            return None if z is None else z.mean()

    assert GaussianPrior(4).plan_reads_codes is False and Planning(4).plan_reads_codes is True
