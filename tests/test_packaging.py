"""Packaging: optional dependencies are extras imported through ``exemplar_vae.optional.require``.

- ``import exemplar_vae`` (every module, the CLI included) works with matplotlib, scikit-learn, scipy and
  tensorboard absent (blocked in a subprocess), and does not import them when present;
- a missing one is a one-line ConfigError naming the extra (``error: ...``, exit 2, from the CLI);
- without matplotlib the training curves are skipped with a warning, not an error;
- no module outside ``optional.py`` imports those packages itself (an AST scan of src/), and every
  ``require`` names an extra of pyproject.toml that installs the module;
- the version lives in one place, ``exemplar_vae.__version__``, which pyproject.toml reads.
"""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import exemplar_vae
from exemplar_vae.errors import ConfigError
from exemplar_vae.optional import require

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "exemplar_vae"
OPTIONAL_MODULES = ("matplotlib", "sklearn", "scipy", "tensorboard")
# the distribution (pip name) that installs each optional top-level module
DISTRIBUTIONS = {
    "matplotlib": "matplotlib",
    "sklearn": "scikit-learn",
    "scipy": "scipy",
    "tensorboard": "tensorboard",
}
BLOCK = "import sys\nfor _m in {mods!r}:\n    sys.modules[_m] = None  # makes `import _m` raise ImportError\n"


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (this one's), returning its exit code and output."""
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def block(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``import name`` (and of its submodules) raise ImportError for this test, as if not installed.

    Submodules already imported by other tests are blocked too: ``import scipy.io`` finds a loaded
    ``scipy.io`` in sys.modules without looking at ``scipy``."""
    for name in names:
        for loaded in [m for m in sys.modules if m.startswith(name + ".")]:
            monkeypatch.setitem(sys.modules, loaded, None)
        monkeypatch.setitem(sys.modules, name, None)


def pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


# --------------------------------------------------------------------------- importing without extras


def test_every_module_imports_with_the_optional_packages_blocked() -> None:
    code = BLOCK.format(mods=OPTIONAL_MODULES) + (
        "import importlib, pkgutil\n"
        "import exemplar_vae, exemplar_vae.cli.main\n"
        "names = [m.name for m in pkgutil.walk_packages(exemplar_vae.__path__, 'exemplar_vae.')]\n"
        "for name in names:\n"
        "    if name != 'exemplar_vae.__main__':  # runs the CLI\n"
        "        importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 40  # walked the whole package


def test_importing_the_package_and_cli_loads_no_optional_package() -> None:
    """They are imported lazily (slow to import), even when installed."""
    code = (
        "import sys\nimport exemplar_vae, exemplar_vae.cli.main\n"
        f"print(sorted(m for m in {OPTIONAL_MODULES!r} if m in sys.modules))\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_cli_names_the_extra_in_one_error_line(tmp_path: Path) -> None:
    code = BLOCK.format(mods=("sklearn",)) + (
        "from exemplar_vae.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    args = ("train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress")
    done = run_python(code, *args)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == "error: the digits dataset needs sklearn.datasets: pip install 'exemplar-vae[digits]'"
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- require


def test_require_returns_the_module() -> None:
    import json

    assert require("json", "none", "this test") is json


def test_require_raises_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    block(monkeypatch, "matplotlib")
    with pytest.raises(ConfigError) as info:
        require("matplotlib", "plots", "plotting the training curves")
    message = str(info.value)
    assert message == "plotting the training curves needs matplotlib: pip install 'exemplar-vae[plots]'"
    assert "\n" not in message
    assert isinstance(info.value.__cause__, ImportError)


def test_require_of_a_module_that_does_not_exist() -> None:
    with pytest.raises(
        ConfigError, match=r"^x needs no_such_module_xyz: pip install 'exemplar-vae\[extra\]'$"
    ):
        require("no_such_module_xyz", "extra", "x")


# --------------------------------------------------------------------------- each import site


def history() -> list[dict[str, Any]]:
    return [{"epoch": e, "train_loss": 100.0 - e, "val_loss": 101.0 - e} for e in (1, 2)]


def test_training_curves_are_skipped_with_a_warning_without_matplotlib(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    from exemplar_vae.viz import plot_training_curves

    block(monkeypatch, "matplotlib")
    path = tmp_path / "curves.png"
    with caplog.at_level(logging.WARNING, logger="exemplar_vae.viz"):
        assert plot_training_curves(history(), path) is None
        assert plot_training_curves(history(), path) is None  # redrawn every epoch: warned once
    assert not path.exists()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()
    assert "pip install 'exemplar-vae[plots]'" in warnings[0].getMessage()


def test_training_curves_are_drawn_with_matplotlib(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from exemplar_vae.viz import plot_training_curves

    path = tmp_path / "curves.png"
    assert plot_training_curves(history(), path) == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_embedding_plot_needs_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import numpy as np

    from exemplar_vae.viz import plot_embedding

    block(monkeypatch, "matplotlib")
    with pytest.raises(ConfigError, match=r"exemplar-vae\[plots\]"):
        plot_embedding(np.zeros((3, 2)), np.zeros(3, dtype=np.int64), tmp_path / "e.png")
    assert not (tmp_path / "e.png").exists()


@pytest.mark.parametrize("blocked", ["sklearn", "matplotlib"])
def test_tsne_map_checks_its_extra_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, blocked: str
) -> None:
    from exemplar_vae.evaluation import tsne_plot

    block(monkeypatch, blocked)
    with pytest.raises(ConfigError, match=r"^the t-SNE map needs .*: pip install 'exemplar-vae\[tsne\]'$"):
        tsne_plot(None, None, tmp_path / "map.png")  # type: ignore[arg-type]  # never reached


def test_digits_need_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    from exemplar_vae.data.loaders import load_digits

    block(monkeypatch, "sklearn")
    with pytest.raises(ConfigError, match=r"exemplar-vae\[digits\]"):
        load_digits()


def test_omniglot_needs_scipy_before_any_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from exemplar_vae.data import loaders, omniglot

    def no_download(*args: object, **kwargs: object) -> Path:
        raise AssertionError("looked for or downloaded chardata.mat before checking for scipy")

    block(monkeypatch, "scipy")
    monkeypatch.setattr(loaders, "omniglot_file", no_download)
    with pytest.raises(ConfigError, match=r"exemplar-vae\[omniglot\]"):
        loaders.load_omniglot(tmp_path, download=True)
    (tmp_path / "chardata.mat").write_bytes(b"not read")
    with pytest.raises(ConfigError, match=r"exemplar-vae\[omniglot\]"):
        omniglot.read_chardata(tmp_path / "chardata.mat")


# --------------------------------------------------------------------------- the source and pyproject


def imports_in(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement anywhere in a file (top level, functions, classes)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def require_calls(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, extra) of every ``require("module", "extra", ...)`` call in a file."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "require":
            args = node.args[:2]
            assert len(args) == 2 and all(isinstance(a, ast.Constant) for a in args), (
                f"{path}:{node.lineno}: require() with non-literal module/extra"
            )
            calls.append((node.lineno, args[0].value, args[1].value))  # type: ignore[attr-defined]
    return calls


def test_optional_packages_are_imported_only_through_require() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: import {module}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "optional.py" or path.parent != SRC
        for line, module in imports_in(path)
        if module.split(".")[0] in OPTIONAL_MODULES
    ]
    assert not offenders, "use exemplar_vae.optional.require instead:\n" + "\n".join(offenders)


def test_every_require_names_an_extra_that_installs_its_module() -> None:
    extras = pyproject()["project"]["optional-dependencies"]
    calls = [(path, *call) for path in sorted(SRC.rglob("*.py")) for call in require_calls(path)]
    assert len(calls) >= 5  # viz (2), t-SNE (2), digits, Omniglot (2)
    for path, line, module, extra in calls:
        where = f"{path.relative_to(ROOT)}:{line}"
        assert extra in extras, f"{where}: no extra '{extra}' in pyproject.toml"
        wanted = DISTRIBUTIONS[module.split(".")[0]]
        names = [req.split(">")[0].split("=")[0].split("[")[0].strip() for req in extras[extra]]
        assert wanted in names, f"{where}: extra '{extra}' does not install {wanted}"


def test_extras_and_core_dependencies() -> None:
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    core = {req.split(">")[0].split("=")[0].strip() for req in project["dependencies"]}
    assert core == {"torch", "numpy", "faiss-cpu", "tqdm", "pillow", "safetensors"}
    assert {"plots", "tsne", "digits", "omniglot", "tensorboard", "all", "gpu", "test"} <= set(extras)
    assert extras["all"] == ["exemplar-vae[plots,tsne,digits,omniglot,tensorboard]"]
    assert "exemplar-vae[all]" in extras["test"]
    assert {"pytest", "ruff", "mypy"} <= {req.split(">")[0] for req in extras["test"]}


def test_the_version_lives_in_one_place() -> None:
    data = pyproject()
    assert "version" not in data["project"] and "version" in data["project"]["dynamic"]
    assert data["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "exemplar_vae.__version__"}
    # setuptools reads the attribute statically (no import, so no torch at build time): a literal assignment
    tree = ast.parse((SRC / "__init__.py").read_text())
    literals = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
        and isinstance(node.value, ast.Constant)
    ]
    assert literals == [exemplar_vae.__version__]


def test_project_urls_point_to_one_repository() -> None:
    urls = pyproject()["project"]["urls"]
    assert {"Homepage", "Repository", "Issues", "Documentation"} <= set(urls)
    assert all(url.startswith("https://github.com/exemplar-vae/exemplar-vae") for url in urls.values())
