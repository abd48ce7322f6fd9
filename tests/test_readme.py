"""The README's Python example runs as written (lucidrains-style README test)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_example_runs() -> None:
    blocks = python_blocks()
    assert blocks, "the README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["samples"].shape == (16, 64)
    assert namespace["variations"].shape == (8, 5, 64)
    est = namespace["est"]
    assert est.log_likelihood.shape == (8,) and (est.log_likelihood >= est.elbo - 1e-6).all()


def test_readme_augmentation_example_runs() -> None:
    blocks = python_blocks()
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
    exec(compile(blocks[1], "README.md", "exec"), namespace)  # noqa: S102
    x_aug, y_aug = namespace["x_aug"], namespace["y_aug"]
    assert x_aug.shape == (100, 64) and (y_aug == namespace["data"].train_y[:100]).all()
    assert ((x_aug * 255).round() == x_aug * 255).all()


def test_readme_mentions_every_cli_command() -> None:
    from exemplar_vae.cli.main import COMMANDS, _subcommand_modules

    names = set(COMMANDS)
    for module in _subcommand_modules():
        names |= set(module.COMMANDS)
    text = README.read_text()
    for name in names:
        assert f"exemplar-vae {name}" in text, name
