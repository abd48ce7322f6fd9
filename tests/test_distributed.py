"""Two processes (torchrun, gloo, CPU) compute what one process computes at the same global batch.

Every case trains on scikit-learn's digits (1,197 training images) with a global batch of 92, so the last
batch of an epoch holds one image and the second rank's share of it is empty. One torchrun launch with two
processes and one plain process run the same cases (``tests/dist_worker.py``); the parameters after
training, the per-epoch losses, the exemplar cache and the retrieved union are compared. Resumed runs
(inside an epoch, and with another number of processes) are compared with uninterrupted ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

WORKER = Path(__file__).with_name("dist_worker.py")

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)


def config(prior: str, **prior_args: Any) -> dict[str, Any]:
    return {
        "data": {"dataset": "digits"},
        "model": {"hidden": 16, "latent_dim": 4},
        "prior": {"name": prior, **prior_args},
        "train": {
            "epochs": 2,
            "warmup": 1,
            "early_stopping": 0,
            "batch_size": 92,
            "seed": 5,
            "device": "cpu",
        },
    }


def with_steps(cfg: dict[str, Any], steps: int | None) -> dict[str, Any]:
    return {**cfg, "train": {**cfg["train"], "max_steps": steps}}


CASES = {
    "gaussian": config("gaussian"),
    "exact": config("exemplar", knn=0, exemplars=300),
    "knn": config("exemplar", knn=10),
    "ivf": config("exemplar", knn=10, search="ivf", nprobe=4),
}
STEPS_PER_EPOCH = 14  # ceil(1197 / 92)


def launch(spec: dict[str, Any], out: Path, processes: int) -> dict[str, Any]:
    spec_path = out.with_suffix(".json")
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    prefix = [sys.executable]
    if processes > 1:
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    proc = subprocess.run(
        [*prefix, str(WORKER), str(spec_path), str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("dist")
    knn = CASES["knn"]
    two_cases = [{"name": name, "config": cfg} for name, cfg in CASES.items()]
    two_cases += [
        # stopped inside the first epoch, resumed by the same two processes
        {"name": "gaussian_part", "config": with_steps(CASES["gaussian"], 5), "run_dir": str(tmp / "g")},
        {"name": "gaussian_resumed", "config": CASES["gaussian"], "run_dir": str(tmp / "g"), "resume": True},
        # stopped at the end of the first epoch; resumed below by one process
        {"name": "knn_part", "config": with_steps(knn, STEPS_PER_EPOCH), "run_dir": str(tmp / "k")},
        {"name": "knn_saved", "config": knn, "run_dir": str(tmp / "k_whole")},
    ]
    one_cases = [{"name": name, "config": cfg} for name, cfg in CASES.items()]
    one_cases += [{"name": "knn_resumed_by_one", "config": knn, "run_dir": str(tmp / "k"), "resume": True}]
    two = launch({"cases": two_cases, "probes": True}, tmp / "two.pt", 2)
    one = launch({"cases": one_cases, "probes": True}, tmp / "one.pt", 1)
    return one, two


def assert_same_run(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["params"].keys() == b["params"].keys()
    for name, value in a["params"].items():
        torch.testing.assert_close(value, b["params"][name], rtol=0, atol=1e-5, msg=name)
    assert len(a["history"]) == len(b["history"])
    for ea, eb in zip(a["history"], b["history"], strict=True):
        for key in ("train_loss", "train_rec", "train_kl", "val_loss"):
            assert ea[key] == pytest.approx(eb[key], rel=1e-5), key


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_train_the_model_of_one(runs: tuple[dict, dict], case: str) -> None:
    one, two = runs
    assert_same_run(one[case], two[case])
    assert one[case]["epochs_run"] == 2


def test_sharded_refresh_is_bit_identical_and_the_union_is_the_same(runs: tuple[dict, dict]) -> None:
    one, two = runs
    assert torch.equal(one["probes"]["cache"], two["probes"]["cache"])
    assert torch.equal(one["probes"]["union"], two["probes"]["union"])
    assert one["probes"]["union"].numel() > 41  # several neighbours per point: a real union


def test_a_run_resumed_inside_an_epoch_equals_an_uninterrupted_one(runs: tuple[dict, dict]) -> None:
    one, two = runs
    assert two["gaussian_part"]["epochs_run"] == 0  # stopped after 5 of 14 steps of epoch 1
    assert_same_run(two["gaussian_resumed"], one["gaussian"])


def test_a_two_process_run_resumed_by_one_process_equals_an_uninterrupted_one(
    runs: tuple[dict, dict],
) -> None:
    one, two = runs
    assert two["knn_part"]["epochs_run"] == 1
    assert_same_run(one["knn_resumed_by_one"], two["knn_saved"])


def test_torchrun_cli_trains_and_evaluates_like_one_process(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node=2 -m exemplar_vae train|evaluate``: one run folder written by rank 0,
    one summary printed, and an evaluation.json equal to the one a single process writes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run = tmp_path / "run"
    train_args = ["-m", "exemplar_vae", "-q", "train", "--dataset", "digits", "--prior", "exemplar", "--knn", "5",
                  "--hidden", "16", "--latent-dim", "4", "--epochs", "2", "--warmup", "1", "--batch-size", "92",
                  "--device", "cpu", "--no-progress", "--out", str(run)]  # fmt: skip
    proc = subprocess.run([*torchrun, *train_args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["epochs_run"] == 2  # rank 0 alone prints
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert {"config.json", "best.json", "best.safetensors", "last.json", "last.safetensors"} <= {
        p.name for p in run.iterdir()
    }
    assert not [p for p in run.iterdir() if p.name.endswith((".tmp", ".pending"))]
    eval_args = ["-m", "exemplar_vae", "-q", "evaluate", str(run), "--samples", "50", "--batch-size", "64",
                 "--check-exact", "70", "--device", "cpu", "--no-progress"]  # fmt: skip
    proc = subprocess.run(
        [*torchrun, *eval_args, "--json"], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((run / "evaluation.json").read_text())
    one_path = tmp_path / "one.json"
    proc = subprocess.run([sys.executable, *eval_args, "--out", str(one_path)], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads(one_path.read_text())
    assert two["examples"] == one["examples"] == 300
    for key in ("log_likelihood", "elbo", "log_likelihood_std_error"):
        assert two[key] == pytest.approx(one[key], rel=1e-6, abs=1e-6), key
    for key in ("mean_error", "max_error"):
        assert two["truncation_check"][key] == pytest.approx(one["truncation_check"][key], abs=1e-6), key
    assert two["truncation_check"]["points"] == 70


def test_resuming_with_another_global_batch_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from exemplar_vae.config import RunConfig
    from exemplar_vae.errors import ExemplarVAEError
    from exemplar_vae.pipeline import train

    cfg = RunConfig.from_dict(with_steps(CASES["gaussian"], 3))
    train(cfg, tmp_path / "r", progress=False)
    saved = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    other = RunConfig.from_dict(
        {**CASES["gaussian"], "train": {**CASES["gaussian"]["train"], "batch_size": 50}}
    )
    with pytest.raises(ExemplarVAEError, match="global batch of 92"):
        train(other, tmp_path / "r", resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == saved


def test_a_failure_on_rank_0_stops_every_rank_instead_of_hanging(tmp_path: Path) -> None:
    """Rank 0 alone runs callbacks and writes files; when that fails, the other ranks are told and stop
    (they would otherwise wait at the next collective until the process group's timeout)."""
    spec = {"cases": [{"name": "fails", "config": CASES["gaussian"], "run_dir": str(tmp_path / "f"),
                       "fail_in_callback": True}]}  # fmt: skip
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           str(spec_path), str(tmp_path / "out.pt")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "a callback failed on purpose" in proc.stderr and "rank 0 failed in a callback" in proc.stderr
