"""The README's Python example runs as written (lucidrains-style README test)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

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


def test_readme_own_data_save_load_and_exemplar_tools_run(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Blocks 3 and 4: training on a user's Dataset, saving and loading the model, generating from one
    class's exemplars and explaining images by their exemplars."""
    monkeypatch.chdir(tmp_path)  # the example saves "my-model" in the working folder
    blocks = python_blocks()
    namespace: dict = {}
    for block in blocks[:4]:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "my-model" / "exemplars.safetensors").is_file()
    assert namespace["pictures"].shape == (4, 64)
    mine, loaded = namespace["mine"], namespace["loaded"]
    for name, value in mine.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    assert namespace["only_threes"].shape == (8, 64)
    why = namespace["why"]
    assert why.ids.shape == (2, 5) and (why.responsibilities.sum(1) <= 1 + 1e-9).all()
    assert (why.responsibilities[:, :-1] >= why.responsibilities[:, 1:]).all()


def test_readme_mentions_every_cli_command() -> None:
    from exemplar_vae.cli.main import COMMANDS, _subcommand_modules

    names = set(COMMANDS)
    for module in _subcommand_modules():
        names |= set(module.COMMANDS)
    text = README.read_text()
    for name in names:
        assert f"exemplar-vae {name}" in text, name
