"""One rank of a two-process torchrun launch (gloo) for ``test_exact_gradient``: its share of the batch
through the sparse-gradient exact prior, gradients summed over ranks; every rank saves its gradients, its
rows, the union and the metrics to ``OUT<rank>``.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/exact_gradient_worker.py OUT
"""

from __future__ import annotations

import os
import sys

import torch
from test_exact_gradient import B, our_gradients, setup

from exemplar_vae import distributed


def main(out: str) -> None:
    launch = distributed.start("cpu")
    torch.set_num_threads(1)  # after start, which shares the machine's cores among the processes
    try:
        encoder, prior, subset, index, z = setup(0.01, log_var=-3.0, seed=3)
        rows = distributed.shard(torch.arange(B))
        _, grads, union = our_gradients(encoder, prior, z[rows], index[rows], subset, 0.01)
        distributed.all_reduce_gradients([prior.log_var, *encoder.parameters()])  # grads[1:] share storage
        torch.save(
            {"grads": grads, "rows": rows, "union": union, "metrics": prior.extra_metrics()},
            out + str(launch.rank),
        )
        distributed.barrier()
    finally:
        distributed.stop()


if __name__ == "__main__":
    main(sys.argv[1])
    # The work is done and saved. Leave without the interpreter's teardown: in it, torch's gloo threads
    # sometimes abort the process ("terminate called without an active exception", SIGABRT with no Python
    # frame; about 1 launch in 20-40 under pytest), which torchrun reports as a failed launch.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
