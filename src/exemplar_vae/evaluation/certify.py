"""Certified bounds on the truncated exemplar prior's error, from a ball tree over the exemplar codes.

The truncated evaluation (``evaluation.truncation``) keeps each test point's K nearest exemplars and is a
lower bound on the full-prior estimate. Here the mass of the dropped exemplars is bounded from above: a
ball tree (hierarchical k-means) over the codes gives each node a shell that holds its members, hence a
smallest possible distance to a sample; nodes are refined (children, then exact distances of a leaf's
members) where the importance weights say the bound matters, until the interval is narrower than a
tolerance or a budget of exact evaluations is spent. The interval is certain to contain the full-prior
importance-sampling estimate (tested against float64 brute force, adversarial cases included).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from exemplar_vae import distributed
from exemplar_vae.evaluation.truncation import candidate_log_prob
from exemplar_vae.functional import isotropic_log_normaliser, squared_distances
from exemplar_vae.priors.base import KernelMixture

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
            # exponents in float64: at a narrow kernel they reach 1e5 nats, beyond float32's resolution
            log_near = torch.log(sizes.double()).unsqueeze(1) - 0.5 * prec * nearest.double()  # [L, S]
            log_leaf = torch.logsumexp(log_near, 0) + LSE_MARGIN  # [S] >= the leaves' mass
            heavy = _fewest_largest(log_weight + log_leaf, room - math.log(4.0))  # [H] sample ids
            log_sum = torch.logsumexp(-0.5 * prec * sq[:, heavy].double(), 0) + LSE_MARGIN  # [H]
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

    def summed_over_ranks(self) -> CertifyStats:
        """The work of every rank of a distributed evaluation (seconds: the slowest rank's)."""
        if not distributed.active():
            return self
        device = distributed.collective_device()
        t = torch.tensor([self.points, self.evaluated, self.nodes], dtype=torch.float64, device=device)
        distributed.all_reduce_sum(t)
        slowest = torch.tensor([self.seconds], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)
        return CertifyStats(int(t[0]), float(t[1]), int(t[2]), float(slowest[0]))


class TruncationBounds:
    """Certified bounds for the truncated prior over a batch of test points.

    Called as f(z [S, B, d], log_weight [S, B] | None) -> (lower, upper), both [S, B]:

    * lower: the truncated value, the mixture over each test point's kept candidates (float32, equal to
      ``truncation.truncated_scorer``'s), a lower bound on the full prior;
    * upper: the kept candidates' mass in float64, plus the dropped exemplars' mass bounded through
      ``refine_dropped_mass``, which refines the ball tree until the test point's gap is below
      ``tolerance``. The gap is weighted by exp(log_weight) -- the rest of the importance log-weight, so the
      tolerance applies to the importance-sampled estimate; without it every sample counts by its
      relative error.

    Args:
        mixture: the full prior as a kernel mixture ([N, d] centres).
        tree: ``build_code_tree(mixture.centers)``.
        mean: [B, d] encoder means of the test points (the truncation searched around them).
        nearest: [B, K] rows of the centres kept for each test point.
        tolerance: target gap per test point, nats.
        budget: at most this fraction of the N exemplars is evaluated exactly per test point.
        stats: where the work done is added up.
    """

    def __init__(
        self,
        mixture: KernelMixture,
        tree: CodeTree,
        mean: Tensor,
        nearest: Tensor,
        tolerance: float,
        budget: float,
        stats: CertifyStats,
    ) -> None:
        self.codes, self.log_var, self.tree = mixture.centers, mixture.log_var.detach(), tree
        self.nearest = nearest  # [B, K] rows of the cache
        self.mean = mean.detach().double()  # [B, d]
        self.tolerance, self.budget, self.stats = tolerance, budget, stats

    def __call__(self, z: Tensor, log_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
        start = time.perf_counter()
        codes, tree = self.codes, self.tree
        n, d = codes.shape
        lower = candidate_log_prob(z, codes[self.nearest], self.log_var, n)  # [S, B]
        prec = float(torch.exp(-self.log_var.double()))
        position = torch.empty_like(tree.order)
        position[tree.order] = torch.arange(n, device=codes.device)  # cache row -> tree position
        # direct differences (no expansion): the bounds must hold at any kernel width
        to_mean = torch.cdist(self.mean, tree.codes, compute_mode="donot_use_mm_for_euclid_dist")  # [B, N]
        uppers = []
        for b in range(z.shape[1]):
            zb = z[:, b].double()  # [S, d]
            log_kept = torch.logsumexp(
                -0.5
                * prec
                * torch.cdist(
                    zb, codes[self.nearest[b]].double(), compute_mode="donot_use_mm_for_euclid_dist"
                ).pow(2),
                1,
            )
            dropped = torch.ones(n, dtype=torch.bool, device=codes.device)
            dropped[position[self.nearest[b]]] = False
            if dropped.any():  # every dropped exemplar is at least this far from the anchor (the mean)
                reach = to_mean[b][dropped].min() - (zb - self.mean[b]).norm(dim=1)
                log_w = log_weight[:, b].double() if log_weight is not None else -log_kept
                ref = refine_dropped_mass(
                    zb, self.mean[b], log_w, log_kept, tree, dropped, reach, self.log_var,
                    self.tolerance, self.budget * n,
                )  # fmt: skip
                total = torch.logsumexp(torch.stack([log_kept, ref.log_exact, ref.log_bound]), 0)
                self.stats.evaluated += ref.evaluated
                self.stats.nodes += ref.nodes
            else:
                total = log_kept
            uppers.append(total)
        log_norm = isotropic_log_normaliser(d, float(self.log_var)) - math.log(n)
        upper = torch.stack(uppers, 1) + log_norm  # [S, B]
        self.stats.points += z.shape[1]
        self.stats.seconds += time.perf_counter() - start
        return lower, upper
