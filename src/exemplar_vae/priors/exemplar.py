"""The exemplar prior: a Parzen window over the encoded training set.

    p(z | X) = 1/N sum_n N(z; mu_phi(x_n), sigma^2 I)

with mu_phi the encoder's mean network (shared with q) and one learned scalar log sigma^2.

Training forms (Norouzi et al. 2020, Sec. 3 and the official code):

* leave-one-out: a training point's own exemplar is masked out (-inf) and the mixture is divided by the
  number of exemplars left;
* exemplar subsampling: every minibatch draws a fresh random subset of M of the N exemplars (without
  replacement, the paper's definition);
* exact mode (k = 0): the M exemplars are encoded with gradient and the full M-component mixture is used;
* retrieval augmented training (k > 0): the k codes nearest to each z among the M-subset are found in a
  cache of all exemplar codes (refreshed by the training loop, stale within an epoch); the union of the
  retrieved exemplars is re-encoded with gradient, and log p(z) is the mixture over that union with the
  exact mixture's weight 1/(M - #left out). All terms are positive, so this is a lower bound on the exact
  subsampled leave-one-out log p(z); it is equal when the union covers the M-subset.

At evaluation (``prior.eval()``) the prior is the whole exemplar set, without leave-one-out, computed
from the cache in blocks (memory stays bounded for 50k exemplars and thousands of codes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from exemplar_vae.errors import ConfigError
from exemplar_vae.functional import (
    LOG_2PI,
    isotropic_log_kernel,
    leave_one_out_mask,
    masked_log_mean_exp,
    squared_distances,
)
from exemplar_vae.interfaces import Encoder
from exemplar_vae.priors.base import Prior
from exemplar_vae.retrieval import SEARCH_NAMES, ApproximateIndex, CodeCache, knn_search, recall


def exemplar_log_kernel(z: Tensor, centers: Tensor, log_var: Tensor) -> Tensor:
    """log N(z_b; c_m, sigma^2 I) for every pair: [B, d], [M, d] -> [B, M].

    Distances are taken in float64 (the paper's code does the same): the prior's variance can become
    small, and the squared-distance expansion in float32 would then cost accuracy.
    """
    sq = squared_distances(z.double(), centers.double())  # [B, M]
    return isotropic_log_kernel(sq, log_var.double(), z.shape[-1])


def streaming_exemplar_log_prob(
    z: Tensor, centers: Tensor, log_var: Tensor, max_elements: int = 2**22
) -> Tensor:
    """log (1/N) sum_n N(z; c_n, sigma^2 I) over all N centers, in blocks of rows and centers.

    The squared distance is expanded and the row term ||z||^2 pulled out of the log-sum-exp, so each
    block costs one fused matrix product (``addmm``) and one log-sum-exp:

        log sum_n exp(-||z - c_n||^2 / 2s^2) = -||z||^2 / 2s^2 + log sum_n exp((z.c_n - ||c_n||^2 / 2) / s^2)

    Codes are first centred on the mean center, which keeps the expansion accurate in float32 (the error
    is about 1e-7 * ||z - c|| * ||c_n - c|| / s^2 nats; tested against a float64 direct difference).

    Args:
        z: [B, d] codes (computation happens in z's dtype).
        centers: [N, d] exemplar codes.
        log_var: scalar log sigma^2.
        max_elements: bound on the size of one [rows, centers] block.

    Returns:
        [B] log-densities, in z's dtype.
    """
    n, d = centers.shape
    dtype = z.dtype
    shift = centers.mean(0, dtype=dtype)  # [d]
    zc, cc = z - shift, centers.to(dtype) - shift  # [B, d], [N, d]
    log_var = log_var.to(dtype)
    prec = torch.exp(-log_var)
    bias = (-0.5 * prec) * cc.pow(2).sum(-1)  # [N]
    center_chunk = min(n, max(1, max_elements // 64))
    row_chunk = max(1, max_elements // center_chunk)
    out = []
    for zb in zc.split(row_chunk):
        acc = torch.full((zb.shape[0],), float("-inf"), dtype=dtype, device=z.device)
        for cb, bb in zip(cc.split(center_chunk), bias.split(center_chunk)):
            logits = torch.addmm(bb, zb, cb.T, alpha=float(prec))  # [r, c] = (z.c - |c|^2 / 2) / s^2
            acc = torch.logaddexp(acc, torch.logsumexp(logits, dim=1))
        out.append(acc - 0.5 * prec * zb.pow(2).sum(-1))
    return torch.cat(out) - 0.5 * d * (LOG_2PI + log_var) - math.log(n)


def candidate_log_prob(z: Tensor, candidates: Tensor, log_var: Tensor, num_total: int) -> Tensor:
    """log (1/N) sum_{k} N(z; c_k, sigma^2 I) over a per-column candidate set only.

    Dropping components can only lower a mixture of positive terms, so this is a lower bound on the full
    prior whose N components include the candidates.

    Args:
        z: [S, B, d] codes; column b was drawn for test point b.
        candidates: [B, K, d] the exemplar codes kept for each test point.
        log_var: scalar log sigma^2.
        num_total: N, the size of the full exemplar set (the mixture weight is 1/N).

    Returns:
        [S, B] log-densities (lower bounds), in z's dtype.
    """
    return candidate_scorer(candidates, log_var, num_total)(z)


def candidate_scorer(candidates: Tensor, log_var: Tensor, num_total: int) -> Callable[[Tensor], Tensor]:
    """``candidate_log_prob`` with the candidates' part computed once: f(z [S, B, d]) -> [S, B].

    Evaluation streams the samples of a batch in chunks; the candidates' part is shared by every chunk.
    One batched product of augmented vectors gives each exponent directly,

        [z, |z|^2, 1] . [c / s^2, -1 / (2 s^2), -|c|^2 / (2 s^2)] = -|z - c|^2 / (2 s^2)   (<= 0),

    so the kernel sum is exp and sum in place, with no max-shift pass. Codes are centred on the
    candidates' mean first; the expansion's float32 rounding is then about 1e-7 * |z - c| |c| / s^2 nats:
    negligible at the variances the models learn, ~0.02 nats at log s^2 = -8 and over a nat at -12 (as for
    any expanded distance in float32; pass float64 candidates there). Computation is in the candidates'
    dtype, the result in z's. Where a sample's sum falls below 1e-20 (every candidate far away; float32
    exponentials would underflow), its test point's column is recomputed with a shifted log-sum-exp.
    """
    d = candidates.shape[-1]
    prec = torch.exp(-log_var.to(candidates.dtype))
    shift = candidates.mean(1, keepdim=True)  # [B, 1, d]
    cc = candidates - shift  # [B, K, d]
    c_aug = torch.cat(
        [
            prec * cc,
            (-0.5 * prec).expand(cc.shape[:-1]).unsqueeze(-1),
            (-0.5 * prec) * cc.pow(2).sum(-1, True),
        ],
        -1,
    )  # [B, K, d + 2]
    c_aug_t = c_aug.transpose(1, 2).contiguous()  # [B, d + 2, K]
    const = -0.5 * d * (LOG_2PI + log_var.to(candidates.dtype)) - math.log(num_total)

    def score(z: Tensor) -> Tensor:
        zc = z.transpose(0, 1).to(candidates.dtype) - shift  # [B, S, d]
        z_aug = torch.cat([zc, zc.pow(2).sum(-1, True), torch.ones_like(zc[..., :1])], -1)  # [B, S, d + 2]
        total = torch.bmm(z_aug, c_aug_t).exp_().sum(-1)  # [B, S] sum_k exp(-|z - c_k|^2 / 2s^2)
        out = total.log()
        far = total < 1e-20  # [B, S]
        cols = far.any(dim=1).nonzero().flatten()  # test points with at least one such sample
        if cols.numel():  # redo their columns (memory at most the main product's) with a shifted sum
            exponent = torch.bmm(z_aug[cols], c_aug_t[cols])  # [c, S, K]
            out[cols] = torch.where(far[cols], torch.logsumexp(exponent, dim=-1), out[cols])
        return (out + const).transpose(0, 1).to(z.dtype)

    return score


SHRINK = 1.0 - 1e-5  # float32 squared distances (1 - 1e-5)(|z|^2 + |c|^2) - 2 z.c are below the exact ones
LSE_MARGIN = 1e-3  # nats added to a float32 log-sum-exp of up to 1e4 terms, above its rounding error


class CodeTree(NamedTuple):
    """A ball tree over exemplar codes (hierarchical k-means), for certified bounds on dropped mass.

    Node j holds the codes ``order[start[j]:end[j]]`` (contiguous: children split their parent's range).
    Every member lies in the shell ``inner[j] <= ||c - center[j]|| <= radius[j]`` (exact, float64).
    """

    order: Tensor  # [N] int64: code rows in tree order
    codes: Tensor  # [N, d] float64: the codes in tree order
    start: Tensor  # [J] int64
    end: Tensor  # [J] int64
    center: Tensor  # [J, d] float64: the mean of the node's members
    radius: Tensor  # [J] float64: largest member distance to the centre
    inner: Tensor  # [J] float64: smallest member distance to the centre
    first_child: Tensor  # [J] int64: children are first_child .. first_child + num_children - 1
    num_children: Tensor  # [J] int64: 0 for a leaf


def _split_node(x: Tensor, branch: int, iters: int, gen: torch.Generator) -> list[Tensor]:
    """Rows of x grouped by a few Lloyd iterations with ``branch`` centroids; halves if k-means cannot
    split them (e.g. duplicated codes). Returns a list of at least two index tensors."""
    k = min(branch, x.shape[0])
    centroids = x[torch.randperm(x.shape[0], generator=gen)[:k].to(x.device)]  # [k, d]
    for _ in range(iters):
        assign = squared_distances(x, centroids).argmin(1)  # [n]
        onehot = torch.nn.functional.one_hot(assign, k).to(x.dtype)  # [n, k]
        counts = onehot.sum(0).unsqueeze(1)  # [k, 1]
        centroids = torch.where(counts > 0, (onehot.T @ x) / counts.clamp_min(1), centroids)
    assign = squared_distances(x, centroids).argmin(1)
    groups = [g for g in (torch.nonzero(assign == j).squeeze(1) for j in range(k)) if g.numel() > 0]
    if len(groups) < 2:
        half = x.shape[0] // 2
        rows = torch.arange(x.shape[0], device=x.device)
        groups = [rows[:half], rows[half:]]
    return groups


def build_code_tree(
    codes: Tensor, branch: int = 8, leaf_size: int = 32, iters: int = 5, seed: int = 0
) -> CodeTree:
    """Split the codes recursively with k-means (``branch`` children) until nodes hold ``leaf_size`` or
    fewer. The bounds built on the tree are valid whatever the clustering quality: each node's shell is
    measured exactly (float64) from its members.

    Args:
        codes: [N, d] exemplar codes.
        branch: children per split.
        leaf_size: largest leaf.
        iters: Lloyd iterations per split.
        seed: seeds the initial centroids.
    """
    x = codes.detach().float()  # the split only steers the bounds; they are measured in float64 below
    n = x.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    order = torch.empty(n, dtype=torch.int64, device=x.device)
    nodes: list[list[int]] = [[0, n, 0, 0]]  # start, end, first_child, num_children
    members = {0: torch.arange(n, device=x.device)}  # node -> its rows of x (until placed)
    queue = [0]
    while queue:
        j = queue.pop()
        rows = members.pop(j)
        start = nodes[j][0]
        if rows.numel() <= leaf_size:
            order[start : start + rows.numel()] = rows
            continue
        nodes[j][2:] = [len(nodes), 0]
        for group in _split_node(x[rows], branch, iters, gen):
            child = len(nodes)
            nodes.append([start, start + group.numel(), 0, 0])
            members[child] = rows[group]
            start += group.numel()
            nodes[j][3] += 1
            queue.append(child)
    table = torch.tensor(nodes, dtype=torch.int64, device=x.device)  # [J, 4]
    st, en = table[:, 0], table[:, 1]
    x = codes.detach().double()
    xs = x[order]  # [N, d] tree order
    prefix = torch.cat([torch.zeros(1, x.shape[1], dtype=x.dtype, device=x.device), xs.cumsum(0)])
    center = (prefix[en] - prefix[st]) / (en - st).unsqueeze(1).to(x.dtype)  # [J, d]
    radius = torch.empty(len(nodes), dtype=x.dtype, device=x.device)
    inner = torch.empty_like(radius)
    for j, (s0, e0) in enumerate(zip(st.tolist(), en.tolist(), strict=True)):
        dist = (xs[s0:e0] - center[j]).norm(dim=1)  # [n_j], direct differences
        radius[j], inner[j] = dist.max(), dist.min()
    return CodeTree(order, xs, st, en, center, radius, inner, table[:, 2], table[:, 3])


class Refinement(NamedTuple):
    """Result of ``refine_dropped_mass`` for one test point, in log-kernel units (no normaliser)."""

    log_exact: Tensor  # [S] log sum of exp(-||z_s - c_n||^2 / 2 s^2) over the exemplars evaluated exactly
    log_bound: Tensor  # [S] upper bound on the same sum over the exemplars still bounded
    evaluated: float  # exact kernel evaluations / S: exemplars evaluated exactly, in whole-sample units
    nodes: int  # tree nodes whose bounds were computed


def _ranges(lo: Tensor, hi: Tensor) -> Tensor:
    """Concatenated ``arange(lo[i], hi[i])``: [F], [F] -> [sum(hi - lo)] int64."""
    sizes = hi - lo  # [F]
    offsets = torch.repeat_interleave(lo - torch.cumsum(sizes, 0) + sizes, sizes)
    return torch.arange(int(sizes.sum()), device=lo.device) + offsets


def refine_dropped_mass(
    z: Tensor,
    origin: Tensor,
    log_weight: Tensor,
    log_kept: Tensor,
    tree: CodeTree,
    dropped: Tensor,
    reach: Tensor,
    log_var: Tensor,
    tolerance: float,
    budget: float,
) -> Refinement:
    """Bound the kernel mass of the exemplars a truncation dropped, refining where it matters.

    A tree node's dropped members lie in its shell, so each contributes at most the kernel at the
    distance ``max(||z - center|| - radius, inner - ||z - center||, reach, 0)``. The full-prior
    importance-sampling estimate then lies in an interval of width
    ``log(1 + sum_s a_s bound_s / sum_s a_s (kept_s + exact_s))`` (a_s = exp(log_weight_s)) above the one
    of the kept and exactly evaluated exemplars. While that width exceeds ``tolerance``, the nodes with the
    largest weighted bounds leave the frontier: an inner node for its children, a leaf for the exact
    distances of its dropped members; the exact kernel sums are taken for the samples that carry the
    leaf's weighted bound, the others keep a bound from the leaf's nearest member. It stops when the
    width is met, or when the exact evaluations would pass ``budget``.

    Exact sums are taken in float32 on codes centred at ``origin``: each squared distance is lowered by
    1e-5 (||z||^2 + ||c||^2), above the worst-case float32 rounding of the expansion in d <= 100
    dimensions (about d * 6e-8 * (||z||^2 + ||c||^2)), and each sum raised by ``LSE_MARGIN`` nats, above the
    float32 rounding of a log-sum-exp; so they stay upper bounds (on masses that are only compared with
    the tolerance).

    Args:
        z: [S, d] float64 codes drawn for one test point.
        origin: [d] float64, the point the truncation searched around (the encoder mean).
        log_weight: [S] float64 log a_s (the rest of the importance log-weight).
        log_kept: [S] float64 log sum of exp(-||z_s - c||^2 / 2 sigma^2) over the kept candidates.
        tree: the ball tree of the codes.
        dropped: [N] bool in tree order, True for the exemplars the truncation left out.
        reach: [S] float64 lower bound on the distance from z_s to any dropped exemplar.
        log_var: scalar log sigma^2.
        tolerance: target gap in nats.
        budget: most exact kernel evaluations, in units of S (whole-sample exemplars).
    """
    prec = float(torch.exp(-log_var.double()))
    counts = torch.cat([dropped.new_zeros(1, dtype=torch.int64), dropped.long().cumsum(0)])  # [N + 1]
    log_tol = math.log(math.expm1(tolerance))
    target = float(torch.logsumexp(log_weight + log_kept, 0)) + log_tol
    # samples whose weighted bound is negligible even with every dropped exemplar at distance ``reach``
    # keep that bound and drop out of the refinement
    reach = reach.clamp_min(0) * (1 - 1e-9)
    crude = math.log(max(1, int(counts[-1]))) - 0.5 * prec * reach.pow(2)  # [S]
    heavy = _fewest_largest(log_weight + crude, target - math.log(4.0))  # [H]
    light = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
    light[heavy] = False
    settled = float(torch.logsumexp(log_weight[light] + crude[light], 0)) if light.any() else -math.inf
    log_exact = torch.full_like(crude, float("-inf"))
    log_bound = torch.where(light, crude, log_exact)
    budget_pairs = budget * z.shape[0]
    ref = _refine_samples(
        z[heavy], origin, log_weight[heavy], tree, dropped, counts, reach[heavy], prec, target, log_tol,
        settled, budget_pairs,
    )  # fmt: skip
    log_exact[heavy], log_bound[heavy] = ref.log_exact, ref.log_bound
    return Refinement(log_exact, log_bound, ref.evaluated / z.shape[0], ref.nodes)


def _refine_samples(
    z: Tensor,
    origin: Tensor,
    log_weight: Tensor,
    tree: CodeTree,
    dropped: Tensor,
    counts: Tensor,
    reach: Tensor,
    prec: float,
    target: float,
    log_tol: float,
    settled_before: float,
    budget: float,
) -> Refinement:
    """The refinement loop of ``refine_dropped_mass`` on a subset of the samples (``evaluated`` in kernel
    evaluations). ``target`` is log (e^tol - 1) + the weighted log-mass of the kept candidates (all
    samples), raised as exact mass is found; ``settled_before`` is the weighted log-mass already bounded
    for the other samples."""
    s = z.shape[0]
    zc = (z - origin).float()  # [S, d]
    zc_sq = SHRINK * zc.pow(2).sum(1)  # [S]
    log_exact = torch.full((s,), float("-inf"), dtype=torch.float64, device=z.device)
    log_frozen = log_exact.clone()  # bounds of leaves taken off the frontier but not evaluated for s

    def bound(nodes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(nodes with dropped members [F], log bounds [S, F], weighted scores [F])."""
        remaining = counts[tree.end[nodes]] - counts[tree.start[nodes]]  # [F]
        nodes, remaining = nodes[remaining > 0], remaining[remaining > 0]
        dist = torch.cdist(z, tree.center[nodes])  # [S, F] float64
        lower = torch.maximum(dist - tree.radius[nodes], tree.inner[nodes] - dist)
        lower = torch.maximum(lower * (1 - 1e-9), reach.unsqueeze(1)).clamp_min(0)
        log_c = torch.log(remaining.double()) - 0.5 * prec * lower.pow(2)  # [S, F]
        return nodes, log_c, torch.logsumexp(log_weight.unsqueeze(1) + log_c, 0)

    nodes, log_c, score = bound(torch.zeros(1, dtype=torch.int64, device=z.device))
    blocks, offsets = [log_c], [0]  # columns of the frontier, added block by block
    alive = torch.ones(nodes.numel(), dtype=torch.bool, device=z.device)
    pairs, visited = 0, 1
    while alive.any():
        found = float(torch.logsumexp(log_weight + log_exact, 0)) + log_tol
        goal = float(torch.logaddexp(torch.tensor(target), torch.tensor(found)))  # tol x (kept + exact)
        settled = float(torch.logsumexp(log_weight + log_frozen, 0))
        settled = float(torch.logaddexp(torch.tensor(settled), torch.tensor(settled_before)))
        live = torch.nonzero(alive).squeeze(1)
        total = float(torch.logaddexp(torch.tensor(settled), torch.logsumexp(score[live], 0)))
        if total <= goal or settled >= goal:
            break
        room = goal + math.log1p(-math.exp(settled - goal))  # what the open bounds may still add
        # take off the frontier the fewest largest nodes that leave at most half the room to the rest
        chosen = live[_fewest_largest(score[live], room - math.log(2.0))]
        pick = nodes[chosen]
        leaf = tree.num_children[pick] == 0
        if leaf.any():  # leaves: exact distances; exact sums only for the samples that need them
            sizes = counts[tree.end[pick[leaf]]] - counts[tree.start[pick[leaf]]]  # [L] dropped members
            fits = pairs + s * torch.cumsum(sizes, 0) <= budget  # a prefix: the largest bounds first
            if not fits[0]:
                break
            unfit = torch.nonzero(leaf).squeeze(1)[~fits]  # chosen leaves left open for want of budget
            keep_open = torch.zeros_like(leaf)
            keep_open[unfit] = True
            chosen, pick, leaf = chosen[~keep_open], pick[~keep_open], leaf[~keep_open]
            leaves, sizes = pick[leaf], sizes[fits]
            rows = _ranges(tree.start[leaves], tree.end[leaves])  # tree-order positions
            rows = rows[dropped[rows]]  # [E], leaf by leaf
            xc = (tree.codes[rows] - origin).float()  # [E, d]
            # (1 - 1e-5)(|z|^2 + |c|^2) - 2 z.c <= ||z - c||^2 despite float32 rounding (see docstring)
            sq = torch.addmm(SHRINK * xc.pow(2).sum(1, keepdim=True) + zc_sq, xc, zc.T, alpha=-2.0)
            sq = sq.clamp_min(0)  # [E, S]
            nearest = torch.segment_reduce(sq, "min", lengths=sizes, axis=0)  # [L, S]
            log_near = torch.log(sizes.float()).unsqueeze(1) - 0.5 * prec * nearest  # [L, S]
            log_leaf = torch.logsumexp(log_near, 0).double() + LSE_MARGIN  # [S] >= the leaves' mass
            heavy = _fewest_largest(log_weight + log_leaf, room - math.log(4.0))  # [H] sample ids
            log_sum = torch.logsumexp(-0.5 * prec * sq[:, heavy], 0).double() + LSE_MARGIN  # [H]
            log_exact[heavy] = torch.logaddexp(log_exact[heavy], log_sum)
            light = torch.ones(s, dtype=torch.bool, device=z.device)
            light[heavy] = False
            log_frozen[light] = torch.logaddexp(log_frozen[light], log_leaf[light])
            pairs += s * rows.numel()
        alive[chosen] = False
        first = tree.first_child[pick[~leaf]]
        children = _ranges(first, first + tree.num_children[pick[~leaf]])  # node ids
        visited += children.numel()
        if children.numel():
            new, log_c, new_score = bound(children)
            offsets.append(nodes.numel())
            blocks.append(log_c)
            nodes, score = torch.cat([nodes, new]), torch.cat([score, new_score])
            alive = torch.cat([alive, torch.ones(new.numel(), dtype=torch.bool, device=z.device)])
    open_sums = [
        torch.logsumexp(block[:, alive[o : o + block.shape[1]]], 1)
        for block, o in zip(blocks, offsets, strict=True)
    ]
    log_bound = torch.logsumexp(torch.stack([log_frozen, *open_sums]), 0)
    return Refinement(log_exact, log_bound, pairs, visited)


def _fewest_largest(log_values: Tensor, limit: float) -> Tensor:
    """Indices of the fewest largest entries whose removal leaves log-sum-exp <= ``limit`` (at least one)."""
    ranked, order = log_values.sort(descending=True)
    tail = torch.logcumsumexp(ranked.flip(0), 0).flip(0)  # tail[i] = log sum of ranked[i:]
    fits = torch.nonzero(tail <= limit)
    return order[: max(1, int(fits[0]) if fits.numel() else order.numel())]


@dataclass
class CertifyStats:
    """Work done by the certified bounds since the last reset (summed over test points)."""

    points: int = 0
    evaluated: float = 0.0  # exact kernel evaluations / S beyond the kept candidates
    nodes: int = 0  # tree nodes bounded
    seconds: float = 0.0


class ExemplarPrior(Prior):
    """Parzen-window prior over encoded exemplars, with leave-one-out, subsampling and retrieval.

    Args:
        exemplars: [N, D] exemplar inputs (the grey training images); not saved in checkpoints.
        latent_dim: d.
        num_exemplars: M, exemplars drawn per minibatch during training (None: N // 2).
        knn: k neighbours per point for retrieval augmented training; 0 for the exact prior over M.
        leave_one_out: mask each training point's own exemplar.
        search_backend: "auto", "faiss" or "torch" (see ``retrieval.knn_search``).
        search: retrieval during training: "exact" (a flat search of the M-subset at every step) or
            "ivf" (``retrieval.ApproximateIndex`` over all N codes, rebuilt after every cache refresh,
            over-fetching to stay inside the subset; its recall against the exact search is measured
            on the first batch after each rebuild and reported as ``search_recall``).
        nprobe: inverted lists visited per query with ``search="ivf"``.
        nlist: inverted lists of the index (None: about 2 sqrt(N)).
    """

    def __init__(
        self,
        exemplars: Tensor,
        latent_dim: int,
        num_exemplars: int | None = None,
        knn: int = 10,
        leave_one_out: bool = True,
        search_backend: str = "auto",
        search: str = "exact",
        nprobe: int = 16,
        nlist: int | None = None,
    ) -> None:
        super().__init__(latent_dim)
        n = exemplars.shape[0]
        if n < 1:
            raise ConfigError("the exemplar prior needs at least one exemplar, got an empty set")
        m = num_exemplars if num_exemplars is not None else max(1, n // 2)
        if not 1 <= m <= n:
            raise ConfigError(f"exemplars per step M={m} must be between 1 and N={n}")
        if not 0 <= knn <= m:
            raise ConfigError(f"k={knn} neighbours must be between 0 and M={m}")
        self.num_exemplars, self.knn, self.leave_one_out = m, knn, leave_one_out
        self.search_backend = search_backend
        if search not in SEARCH_NAMES:
            raise ConfigError(f"unknown search '{search}'; valid: {', '.join(SEARCH_NAMES)}")
        if nprobe < 1:
            raise ConfigError(f"--nprobe must be at least 1, got {nprobe}")
        self.search, self.nprobe, self.nlist = search, nprobe, nlist
        self._index: ApproximateIndex | None = None
        self._index_source: Tensor | None = None  # the cache tensor the index was built from
        self.search_recall: float | None = None  # measured on the first batch after each index rebuild
        self.log_var = nn.Parameter(torch.zeros(()))  # log sigma^2, one scalar for all exemplars and dims
        self.register_buffer("exemplars", exemplars, persistent=False)  # [N, D]
        self.cache = CodeCache()
        # Evaluation: None scores every code against all N exemplars; K keeps, for each test point, the K
        # exemplars whose codes are nearest its encoder mean (a lower bound; see ``batch_scorer``).
        self.eval_candidates: int | None = None
        # Certified bounds (``batch_bounds``): refine until the certified gap of a test point is below
        # ``certify_tolerance`` nats or ``certify_budget`` x N exemplars were evaluated exactly for it.
        self.certify_tolerance = 0.01
        self.certify_budget = 0.5
        self.certify_stats = CertifyStats()
        self._tree_source: Tensor | None = None  # the cache tensor the tree below was built from
        self._tree: CodeTree | None = None

    # -- exemplar set -------------------------------------------------------------------------------
    @property
    def num_total(self) -> int:
        """N, the size of the exemplar set."""
        return self.exemplars.shape[0]

    def set_exemplars(self, exemplars: Tensor) -> None:
        """Replace the exemplar set (e.g. add new data without retraining); invalidates the cache."""
        if exemplars.ndim != 2 or exemplars.shape[0] < 1:
            raise ConfigError(
                f"exemplars must be a non-empty [N, D] tensor, got shape {tuple(exemplars.shape)}"
            )
        self.exemplars = exemplars.to(self.log_var.device)
        self.cache.invalidate()

    def refresh(self, encoder: Encoder) -> None:
        """Encode all exemplars into the code cache (an explicit call from the training loop)."""
        self.cache.refresh(encoder, self.exemplars)

    # -- training-time pieces ------------------------------------------------------------------------
    def draw_subset(self, generator: torch.Generator | None = None) -> Tensor:
        """M distinct exemplar indices, uniformly at random: [M] int64."""
        perm = torch.randperm(self.num_total, device=self.exemplars.device, generator=generator)
        return perm[: self.num_exemplars]

    def _normaliser(self, index: Tensor | None, subset: Tensor) -> Tensor:
        """Number of exemplars each point's mixture is averaged over: M, or M - 1 if it left itself out."""
        m = torch.full((1,), float(subset.shape[0]), dtype=torch.float64, device=subset.device)
        if index is None or not self.leave_one_out:
            return m
        member = torch.zeros(self.num_total, dtype=torch.bool, device=subset.device)
        member[subset] = True
        return m - member[index].double()  # [B]

    def exact_log_prob(self, z: Tensor, encoder: Encoder, index: Tensor | None, subset: Tensor) -> Tensor:
        """log p(z) over every exemplar of ``subset``, encoded with gradient: [B, d] -> [B]."""
        centers = encoder.mean(self.exemplars[subset])  # [M, d]
        log_k = exemplar_log_kernel(z, centers, self.log_var)  # [B, M]
        mask = leave_one_out_mask(index, subset) if (self.leave_one_out and index is not None) else None
        return masked_log_mean_exp(log_k, mask, self._normaliser(index, subset)).to(z.dtype)

    def retrieve(self, z: Tensor, index: Tensor | None, subset: Tensor) -> Tensor:
        """Indices of the exemplars whose cached codes are nearest to each z within the subset.

        Each point gets k neighbours other than itself (k + 1 are fetched under leave-one-out), and the
        union over the batch is returned: [U] int64 dataset indices.
        """
        k = min(self.knn + (1 if self.leave_one_out and index is not None else 0), subset.shape[0])
        if self.search == "ivf":
            nearest, fresh = self.approximate_index()
            found = nearest.search_subset(z.detach(), subset, self.cache.get(), k)  # [B, k] dataset indices
            if fresh:  # measure the recall once per rebuild (one exact search)
                self.search_recall = recall(found, self.exact_neighbours(z, subset, k))
            return torch.unique(found.reshape(-1))  # [U]
        return torch.unique(self.exact_neighbours(z, subset, k).reshape(-1))  # [U]

    def exact_neighbours(self, z: Tensor, subset: Tensor, k: int) -> Tensor:
        """The k members of ``subset`` whose cached codes are nearest each z: [B, k] dataset indices."""
        codes = self.cache.get()[subset]  # [M, d]
        _, nearest = knn_search(z.detach(), codes, k, self.search_backend)  # [B, k] rows of subset
        return subset[nearest]

    def approximate_index(self) -> tuple[ApproximateIndex, bool]:
        """The IVF index over the current cache, rebuilt after a refresh; and whether it was just built."""
        codes = self.cache.get()
        if self._index is None or self._index_source is not codes:
            self._index = ApproximateIndex(codes, self.nlist, self.nprobe)
            self._index_source = codes
            return self._index, True
        return self._index, False

    def knn_log_prob(self, z: Tensor, encoder: Encoder, index: Tensor | None, subset: Tensor) -> Tensor:
        """Retrieval lower bound on ``exact_log_prob``: the mixture over the retrieved union only."""
        union = self.retrieve(z, index, subset)  # [U]
        centers = encoder.mean(self.exemplars[union])  # [U, d], re-encoded with gradient
        log_k = exemplar_log_kernel(z, centers, self.log_var)  # [B, U]
        mask = leave_one_out_mask(index, union) if (self.leave_one_out and index is not None) else None
        return masked_log_mean_exp(log_k, mask, self._normaliser(index, subset)).to(z.dtype)

    # -- the Prior interface -------------------------------------------------------------------------
    def log_prob(self, z: Tensor, encoder: Encoder, index: Tensor | None = None) -> Tensor:
        if not self.training:
            return self.full_log_prob(z)
        if self.leave_one_out and index is None:
            raise ValueError("leave-one-out training needs the dataset index of every point")
        subset = self.draw_subset()
        if self.knn == 0:
            return self.exact_log_prob(z, encoder, index, subset)
        return self.knn_log_prob(z, encoder, index, subset)

    def full_log_prob(self, z: Tensor) -> Tensor:
        """The test-time prior over all N cached exemplar codes, no leave-one-out: [B, d] -> [B]."""
        return streaming_exemplar_log_prob(z, self.cache.get(), self.log_var.detach())

    def _truncation(self, mean: Tensor) -> tuple[Tensor, Tensor] | None:
        """(squared distances, indices), each [B, K], of the ``eval_candidates`` cached codes nearest each
        test point's encoder mean; None when the evaluation scores against every exemplar."""
        k = self.eval_candidates
        if self.training or k is None or k >= self.num_total:
            return None
        return knn_search(mean, self.cache.get(), k, self.search_backend)

    def batch_scorer(self, mean: Tensor, encoder: Encoder) -> Callable[[Tensor], Tensor]:
        """Importance-sampling scorer; with ``eval_candidates = K`` it keeps, for each test point, only the
        K exemplars whose cached codes are nearest the point's encoder mean (faiss search), which makes
        the prior term K/N times cheaper and the estimate a lower bound on the full-prior one."""
        truncation = self._truncation(mean)
        if truncation is None:
            return super().batch_scorer(mean, encoder)
        candidates = self.cache.get()[truncation[1]]  # [B, K, d]
        return candidate_scorer(candidates, self.log_var.detach(), self.num_total)

    def code_tree(self) -> CodeTree:
        """The ball tree over the current cache used by ``batch_bounds`` (rebuilt after a refresh)."""
        codes = self.cache.get()
        if self._tree is None or self._tree_source is not codes:
            self._tree = build_code_tree(codes)
            self._tree_source = codes
        return self._tree

    def batch_bounds(self, mean: Tensor, encoder: Encoder) -> Callable[..., tuple[Tensor, Tensor]]:
        """Certified bounds for the truncated evaluation: f(z [S, B, d], log_weight [S, B] or None) ->
        (the truncated value, an upper bound on the full prior), both [S, B]; see ``TruncationBounds``."""
        truncation = self._truncation(mean)
        if truncation is None:
            return super().batch_bounds(mean, encoder)
        return TruncationBounds(self, mean, truncation[1])

    @torch.no_grad()
    def sample(
        self, n: int, encoder: Encoder, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        """Pick exemplars uniformly (from the whole exemplar set, extra exemplars included), then
        z ~ N(mu(x_n), (T sigma)^2 I): [n, d]."""
        codes = self.cache.get()  # [N, d]
        pick = torch.randint(codes.shape[0], (n,), device=codes.device, generator=generator)  # [n]
        eps = torch.randn(n, codes.shape[1], device=codes.device, dtype=codes.dtype, generator=generator)
        return codes[pick] + temperature * torch.exp(0.5 * self.log_var) * eps

    def variation_kernel(self, mean: Tensor, log_var: Tensor) -> tuple[Tensor, Tensor]:
        """r(z|x) = N(mu(x), sigma^2 I): the exemplar prior's own transition kernel."""
        return mean, self.log_var.expand_as(mean)

    def extra_metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {"prior_log_var": float(self.log_var.detach())}
        if self.search == "ivf" and self.search_recall is not None:
            metrics["search_recall"] = self.search_recall
        return metrics


class TruncationBounds:
    """Certified bounds for the truncated exemplar prior over a batch of test points.

    Called as f(z [S, B, d], log_weight [S, B] | None) -> (lower, upper), both [S, B]:

    * lower: the truncated value, the mixture over each test point's kept candidates (float32, equal to
      ``batch_scorer``'s), a lower bound on the full prior;
    * upper: the kept candidates' mass in float64, plus the dropped exemplars' mass bounded through
      ``refine_dropped_mass``, which refines the ball tree until the test point's gap is below the
      prior's ``certify_tolerance``. The gap is weighted by exp(log_weight) -- the rest of the importance
      log-weight, so the tolerance applies to the importance-sampled estimate; without it every sample
      counts by its relative error.
    """

    def __init__(self, prior: ExemplarPrior, mean: Tensor, nearest: Tensor) -> None:
        self.prior, self.nearest = prior, nearest  # [B, K] rows of the cache
        self.mean = mean.detach().double()  # [B, d]
        self.log_var = prior.log_var.detach()

    def __call__(self, z: Tensor, log_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
        start = time.perf_counter()
        prior, tree = self.prior, self.prior.code_tree()
        codes = prior.cache.get()
        n, d = codes.shape
        lower = candidate_log_prob(z, codes[self.nearest], self.log_var, n)  # [S, B]
        prec = float(torch.exp(-self.log_var.double()))
        position = torch.empty_like(tree.order)
        position[tree.order] = torch.arange(n, device=codes.device)  # cache row -> tree position
        to_mean = squared_distances(self.mean, tree.codes).clamp_min(0).sqrt()  # [B, N] float64
        uppers = []
        for b in range(z.shape[1]):
            zb = z[:, b].double()  # [S, d]
            log_kept = torch.logsumexp(
                -0.5 * prec * squared_distances(zb, codes[self.nearest[b]].double()), 1
            )
            dropped = torch.ones(n, dtype=torch.bool, device=codes.device)
            dropped[position[self.nearest[b]]] = False
            if dropped.any():  # every dropped exemplar is at least this far from the anchor (the mean)
                reach = to_mean[b][dropped].min() - (zb - self.mean[b]).norm(dim=1)
                log_w = log_weight[:, b].double() if log_weight is not None else -log_kept
                ref = refine_dropped_mass(
                    zb, self.mean[b], log_w, log_kept, tree, dropped, reach, self.log_var,
                    prior.certify_tolerance, prior.certify_budget * n,
                )  # fmt: skip
                total = torch.logsumexp(torch.stack([log_kept, ref.log_exact, ref.log_bound]), 0)
                prior.certify_stats.evaluated += ref.evaluated
                prior.certify_stats.nodes += ref.nodes
            else:
                total = log_kept
            uppers.append(total)
        log_norm = -0.5 * d * (LOG_2PI + float(self.log_var)) - math.log(n)
        upper = torch.stack(uppers, 1) + log_norm  # [S, B]
        prior.certify_stats.points += z.shape[1]
        prior.certify_stats.seconds += time.perf_counter() - start
        return lower, upper
