"""The CLI's options, over every registered subcommand (``cli.main.SUBCOMMAND_MODULES`` included).

A flag means one thing wherever it appears (same dest, same type, switch or value), no two flags share
a meaning (an explicit synonym list), every option has help text, every ``--help`` exits 0, ``-q`` works
before and after the subcommand, progress bars follow ``-q``/``--no-progress``/the terminal, and exit
codes are 2 for usage and bad input, 1 for a run that failed.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exemplar_vae import errors
from exemplar_vae.cli import downstream
from exemplar_vae.cli import main as cli
from exemplar_vae.cli.main import build_parser, deprecated_flags, main, subcommand_parsers

# Flags used by two or more subcommands and the one thing each means. A new subcommand that reuses one
# of these must mean the same; one that shares a new flag with another subcommand adds it here.
SHARED_MEANINGS = {
    "--amp": "mixed precision of the training steps",
    "--arch": "network architecture (several: one row per value)",
    "--batch-size": "examples processed together",
    "--candidates": "exemplar prior: score each test point against its K nearest exemplars; 0 = all",
    "--check-exact": "re-score the first n test points with the full prior",
    "--checkpoint": "which weights of a run: best or last",
    "--compile": "torch.compile of the hot tensor work: auto, on or off (eager fallback)",
    "--data-dir": "folder with the dataset's standard files",
    "--dataset": "the dataset (several: one row per value)",
    "--device": "auto, cpu, cuda, cuda:N",
    "--early-stopping": "patience in epochs after warm-up",
    "--epochs": "(maximum) epochs of training",
    "--extra-exemplars": "an .npz of images added to a trained model's exemplar set",
    "--hidden": "width of the hidden layers of the network trained",
    "--json": "print one JSON object",
    "--k": "nearest neighbours looked up per query (probe: several k, one row each)",
    "--knn": "k neighbours retrieved per code in training; 0 = exact prior",
    "--limit": "only the first n examples the command works through (the scored split; augment's images)",
    "--lr": "learning rate",
    "--no-progress": "no progress bars",
    "--out": "where the output goes (file or folder)",
    "--pixels": "form of decoded images: rounded, mean, sample",
    "--prior": "the prior (several: one row per value)",
    "--quiet": "only warnings and results",
    "--samples": "importance samples per test point",
    "--search": "retrieval search: exact or ivf",
    "--seed": "random seed",
    "--seeds": "runs per row, seeds 1..n",
    "--temperature": "multiplies the sampling std",
    "--train-size": "keep only the first N training images",
    "--variations": "r(z|x) variations per image",
    "--warmup": "epochs of linear KL warm-up",
    "--with-val": "the validation images join the reference set (exemplars, kNN index)",
}

# Each set: spellings of one meaning; the visible options of all subcommands use at most one of them.
SYNONYMS = [
    {"--limit", "--test-limit", "--max-examples", "--n-test", "--first"},
    {"--out", "--output", "--out-dir", "--output-dir", "--outdir", "-o"},
    {"--seeds", "--n-seeds", "--num-seeds", "--runs"},
    {"--epochs", "--budget", "--n-epochs", "--max-epochs"},
    {"--variations", "--per-example", "--n-variations"},
    {"--with-val", "--add-val-exemplars", "--add-val", "--include-val"},
    {"--extra-exemplars", "--add-exemplars", "--more-exemplars"},
    {"--pixels", "--output-form", "--form"},
    {"--device", "--gpu", "--cuda"},
    {"--seed", "--random-seed"},
    {"--data-dir", "--data-root", "--root"},
    {"--train-size", "--n-train", "--train-limit"},
    {"--samples", "--importance-samples", "--n-samples"},
    {"--temperature", "--temp", "-t"},
    {"--batch-size", "--batch", "--bs"},
    {"--no-progress", "--progress", "--quiet-progress"},
    {"--quiet", "--silent"},
]


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser by name (aliases once), and the top-level parser as ''."""
    top = build_parser()
    unique: dict[int, tuple[str, argparse.ArgumentParser]] = {}
    for name, p in subcommand_parsers(top).items():
        unique.setdefault(id(p), (name, p))
    return {"": top, **dict(unique.values())}


def actions(p: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for a in p._actions:
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            yield a


def hidden(a: argparse.Action) -> bool:
    return a.help == argparse.SUPPRESS


def signature(a: argparse.Action) -> tuple[str, str]:
    """(dest, type): "switch" for flags without a value, else the type's name (str when none is given)."""
    if isinstance(a, argparse.BooleanOptionalAction):
        return a.dest, "bool"
    if a.nargs == 0:
        return a.dest, "switch"
    return a.dest, getattr(a.type, "__name__", repr(a.type)) if a.type is not None else "str"


def visible_uses() -> dict[str, dict[str, argparse.Action]]:
    """flag -> {subcommand: its action}, over the visible options of every subcommand."""
    uses: dict[str, dict[str, argparse.Action]] = defaultdict(dict)
    for name, p in parsers().items():
        for a in actions(p):
            if name and not hidden(a):
                for flag in a.option_strings:
                    uses[flag][name] = a
    return uses


def test_every_subcommand_is_registered_once() -> None:
    commands = set(cli.COMMANDS)
    for module in cli._subcommand_modules():
        assert not commands & set(module.COMMANDS), module.__name__
        commands |= set(module.COMMANDS)
    assert set(subcommand_parsers(build_parser())) == commands


def test_every_option_has_help() -> None:
    deprecated = deprecated_flags()
    for name, p in parsers().items():
        for a in actions(p):
            where = f"{name or 'exemplar-vae'} {'/'.join(a.option_strings) or a.dest}"
            if hidden(a):  # only the old spellings of renamed flags hide
                assert name and set(a.option_strings) <= set(deprecated.get(name, {})), where
                continue
            assert isinstance(a.help, str) and a.help.strip(), f"{where} has no help text"
    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    assert sub.help
    listed = {c.dest: c.help for c in sub._choices_actions}
    for name in parsers():
        if name:
            assert listed.get(name), f"subcommand {name} has no help line in exemplar-vae --help"


def test_a_flag_means_one_thing() -> None:
    for flag, where in visible_uses().items():
        kinds = {signature(a) for a in where.values()}
        assert len(kinds) == 1, f"{flag} means different things: " + ", ".join(
            f"{cmd}: dest={signature(a)[0]} type={signature(a)[1]}" for cmd, a in where.items()
        )
        if flag.startswith("--") and len(where) > 1:
            assert flag in SHARED_MEANINGS, (
                f"{flag} is shared by {sorted(where)}: check it means the same in each and add it to "
                "SHARED_MEANINGS"
            )


def test_no_two_flags_for_one_meaning() -> None:
    flags = set(visible_uses())
    for group in SYNONYMS:
        used = flags & group
        assert len(used) <= 1, f"{sorted(used)} name one meaning; keep one spelling"
    shared = set(SHARED_MEANINGS)
    for group in SYNONYMS:
        assert len(group & shared) <= 1, group


def test_seeds_are_1_to_n_everywhere() -> None:
    for cmd, a in visible_uses()["--seeds"].items():
        assert a.help is not None and "1..n" in a.help, cmd


def test_classify_runs_seeds_1_to_n(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[list[int]] = []

    def fake(*args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.append(list(args[4]))
        raise errors.ConfigError("stop here")

    monkeypatch.setattr(downstream, "compare_augmentation", fake)
    assert main(["-q", "classify", "--dataset", "digits", "--seeds", "3"]) == 2
    assert seen == [[1, 2, 3]]
    assert main(["-q", "classify", "--dataset", "digits", "--seeds", "0"]) == 2
    assert "--seeds must be at least 1, got 0" in capsys.readouterr().err and len(seen) == 1


def sample_value(a: argparse.Action) -> list[str]:
    if a.nargs == 0:
        return []
    if a.choices:
        return [str(next(iter(a.choices)))]
    return {"int": ["3"], "float": ["0.5"]}.get(getattr(a.type, "__name__", ""), ["value"])


def required_args(p: argparse.ArgumentParser) -> list[str]:
    argv: list[str] = []
    for a in actions(p):
        if not a.option_strings and a.nargs not in ("?", "*"):
            argv += sample_value(a)
        elif a.required:
            argv += [a.option_strings[0], *sample_value(a)]
    return argv


def test_deprecated_spellings_are_hidden_and_set_the_new_flag(
    recorded: list[tuple[argparse.Namespace, int]], caplog: pytest.LogCaptureFixture
) -> None:
    ps, visible = parsers(), visible_uses()
    for cmd, flags in deprecated_flags().items():
        assert flags, cmd
        for old, new in flags.items():
            p = ps[cmd]
            assert old not in p.format_help(), f"{cmd} {old} is shown in --help"
            a = p._option_string_actions[new]
            assert not hidden(a) and old not in visible, (cmd, old)
            value = sample_value(a)
            before = [cmd, *required_args(p)]
            with_old = vars(build_parser().parse_args([*before, old, *value]))
            assert with_old.pop(cli.DEPRECATED_USED) == [f"{old} is deprecated; use {new}"]
            assert with_old == vars(build_parser().parse_args([*before, new, *value])), (cmd, old)
            caplog.clear()
            assert main([*before, old, *value]) == 0
            assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
                f"{old} is deprecated; use {new}"
            ]


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "RUN", "--exemplars", "extra.npz"],
        ["generate", "RUN", "--out", "x.png", "--exemplars", "extra.npz"],
        ["reproduce", "--output", "x"],
    ],
)
def test_old_spellings_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_train_exemplars_is_m() -> None:
    ns = build_parser().parse_args(["train", "--out", "r", "--exemplars", "100"])
    assert ns.exemplars == 100
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--out", "r", "--exemplars", "extra.npz"])


def test_every_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    for name in parsers():
        with pytest.raises(SystemExit) as e:
            main([name, "--help"] if name else ["--help"])
        assert e.value.code == 0, name
        assert "usage: exemplar-vae" in capsys.readouterr().out


def test_python_m_exemplar_vae_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "exemplar_vae", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    for name in parsers():
        assert name in proc.stdout


class Stderr:
    """A stand-in stderr that is or is not a terminal."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[argparse.Namespace, int]]:
    """Every subcommand replaced by a recorder of (args, logging level); main() runs nothing else."""
    calls: list[tuple[argparse.Namespace, int]] = []
    levels: list[int] = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: levels.append(kw["level"]))

    def record(args: argparse.Namespace) -> int:
        calls.append((args, levels[-1]))
        return 0

    for table in [cli.COMMANDS, *(m.COMMANDS for m in cli._subcommand_modules())]:
        for name in table:
            monkeypatch.setitem(table, name, record)
    return calls


@pytest.mark.parametrize("tty", [True, False])
def test_quiet_before_or_after_the_subcommand(
    recorded: list[tuple[argparse.Namespace, int]], monkeypatch: pytest.MonkeyPatch, tty: bool
) -> None:
    monkeypatch.setattr(sys, "stderr", Stderr(tty))
    for name, p in parsers().items():
        if not name:
            continue
        argv = [name, *required_args(p)]
        for extra, quiet in (([], False), (["-q"], True), (["--quiet"], True)):
            for before, after in ((extra, []), ([], extra)):
                recorded.clear()
                assert main([*before, *argv, *after]) == 0
                ((args, level),) = recorded
                assert args.quiet is quiet, (name, before, after)
                assert level == (logging.WARNING if quiet else logging.INFO)
                assert args.no_progress is (quiet or not tty), (name, before, after, tty)
        if "--no-progress" in p._option_string_actions:
            recorded.clear()
            assert main([*argv, "--no-progress"]) == 0
            assert recorded[0][0].no_progress is True


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.ConfigError("bad value"), 2),
        (errors.DataError("bad file"), 2),
        (errors.CheckpointError("bad checkpoint"), 2),
        (errors.ExemplarVAEError("bad input"), 2),
    ],
)
def test_exit_codes(
    error: Exception, code: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setitem(cli.COMMANDS, "table", fail)
    assert main(["-q", "table", "run"]) == code
    assert capsys.readouterr().err == f"error: {error}\n"


def test_failed_run_exits_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    run_failed = getattr(errors, "RunFailed", None)
    if run_failed is None:
        pytest.skip("errors.RunFailed does not exist yet")

    def fail(args: argparse.Namespace) -> int:
        raise run_failed("training diverged at epoch 1 (loss nan); try a smaller --lr")

    monkeypatch.setitem(cli.COMMANDS, "train", fail)
    assert main(["-q", "train", "--out", "run"]) == 1
    assert capsys.readouterr().err.startswith("error: training diverged")


def test_usage_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["nope"], ["train"], ["evaluate", str(tmp_path), "--samples", "many"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2, argv
        assert "usage:" in capsys.readouterr().err
