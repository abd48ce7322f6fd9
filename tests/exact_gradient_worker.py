"""One rank of a two-process torchrun launch (gloo) for ``test_exact_gradient``: its share of the batch
through the sparse-gradient exact prior, gradients summed over ranks; every rank saves its gradients, its
rows, the union and the metrics to ``OUT<rank>``.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/exact_gradient_worker.py OUT
"""

from __future__ import annotations

import sys

import torch
from test_exact_gradient import B, setup
from torch import Tensor

from exemplar_vae import distributed


def main(out: str) -> None:
    torch.set_num_threads(1)
    launch = distributed.start("cpu")
    try:
        encoder, prior, subset, index, z = setup(0.01, log_var=-3.0, seed=3)
        rows = distributed.shard(torch.arange(B))
        zz = z[rows].clone().requires_grad_(True)
        unions: list[Tensor] = []
        find = prior.mass_carrying_union

        def recorded(resp: Tensor, tolerance: float) -> tuple[Tensor, Tensor]:
            found = find(resp, tolerance)
            unions.append(found[0])
            return found

        prior.mass_carrying_union = recorded  # type: ignore[method-assign]
        (-prior.exact_log_prob_sparse_grad(zz, encoder, index[rows], subset, 0.01).sum()).backward()
        params = [prior.log_var, *encoder.parameters()]
        distributed.all_reduce_gradients(params)
        grads = [zz.grad, *(p.grad for p in params)]
        torch.save(
            {"grads": grads, "rows": rows, "union": unions[0], "metrics": prior.extra_metrics()},
            out + str(launch.rank),
        )
        distributed.barrier()
    finally:
        distributed.stop()


if __name__ == "__main__":
    main(sys.argv[1])
