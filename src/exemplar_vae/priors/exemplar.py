"""The exemplar prior: a Parzen window over the encoded training set (docs/paper.md §1-2).

    p(z | X) = 1/N sum_n N(z; mu_phi(x_n), sigma^2 I)

with mu_phi the encoder's mean network (shared with q) and one learned scalar log sigma^2.

Training forms (Norouzi et al. 2020, Sec. 3):

* leave-one-out: a training point's own exemplar is masked out (-inf) and the mixture is divided by the
  number of exemplars left;
* exemplar subsampling: every minibatch draws a fresh random subset of M of the N exemplars (without
  replacement, the paper's definition), as the first M of a keyed pseudo-random permutation
  (``priors.subset``): membership is an O(1) test, so a retrieval step does no O(N) work;
* exact mode (k = 0): the M exemplars are encoded with gradient and the full M-component mixture is used;
  with a gradient tolerance (``grad_tolerance``) all M are encoded without gradient, and only the union
  of the exemplars that carry each point's responsibility mass, all but at most the tolerance, is
  re-encoded with gradient (``exact_log_prob_sparse_grad``): the same value, the exact gradient for z and
  log sigma^2, and an encoder gradient that leaves out only the dropped exemplars' terms;
* retrieval augmented training (k > 0): the k codes nearest to each z among the M-subset are found in a
  cache of all exemplar codes (refreshed by the training loop, stale within an epoch); the union of the
  retrieved exemplars is re-encoded with gradient, and log p(z) is the mixture over that union with the
  exact mixture's weight 1/(M - #left out) (``ExemplarPrior.knn_log_prob``). All terms are positive, so
  this is a lower bound on the exact subsampled leave-one-out log p(z); it is equal when the union covers
  the subset.

At evaluation (``prior.eval()``) the prior is the whole exemplar set, without leave-one-out, computed
from the cache in blocks (memory stays bounded for 50k exemplars and thousands of codes). Evaluation may
truncate it to the exemplars near each test point through ``kernel_mixture`` (see ``evaluation/``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from exemplar_vae import distributed
from exemplar_vae.data.store import ExemplarStore
from exemplar_vae.errors import ConfigError
from exemplar_vae.functional import (
    isotropic_log_kernel,
    isotropic_log_normaliser,
    kernel_dtype,
    leave_one_out_mask,
    masked_log_mean_exp,
    mass_carrying_components,
    responsibilities,
    squared_distances,
)
from exemplar_vae.interfaces import Encoder
from exemplar_vae.priors.base import KernelMixture, Prior
from exemplar_vae.priors.subset import KeyedSubset
from exemplar_vae.retrieval import CodeCache, Subset, SubsetSearch, check_search
from exemplar_vae.retrieval.search import subset_size


def check_exemplar_counts(n: int, m: int, knn: int) -> None:
    """The exemplar prior's sizes: 1 <= M <= N exemplars per step, 0 <= k <= M neighbours.

    Raises:
        ConfigError: naming the flag and the value.
    """
    if n < 1:
        raise ConfigError("the exemplar prior needs at least one exemplar, got an empty set")
    if m < 1:
        raise ConfigError(f"--exemplars M={m} must be at least 1")
    if m > n:
        raise ConfigError(f"--exemplars M={m} is larger than the training set N={n}")
    if knn < 0:
        raise ConfigError(f"--knn k={knn} must be >= 0 (0 = the exact prior over M)")
    if knn > m:
        raise ConfigError(f"--knn k={knn} is larger than the exemplars per step M={m}")


def check_grad_tolerance(tolerance: float | None, knn: int) -> None:
    """The exact prior's gradient tolerance: None (off) or 0 <= tol < 1, and only with k = 0.

    Raises:
        ConfigError: naming the flag and the value.
    """
    if tolerance is None:
        return
    if not 0 <= tolerance < 1:  # NaN fails too
        raise ConfigError(
            f"--grad-tolerance must be in [0, 1) (the responsibility a point may leave out of the encoder "
            f"gradient), got {tolerance}"
        )
    if knn != 0:
        raise ConfigError(
            f"--grad-tolerance applies to the exact prior (--knn 0); with --knn {knn} only the retrieved "
            "exemplars are re-encoded already"
        )


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

    Codes are first centred on the mean center, which keeps the expansion accurate in float32 at the
    variances models learn; where ``functional.expansion_error`` says it would pass ``KERNEL_TOLERANCE``
    (a narrow kernel) the blocks are computed in float64 (tested against a float64 direct difference
    for log s^2 from -16 to 6).

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
    sq_max = (
        float(zc.detach().pow(2).sum(-1).max() + cc.detach().pow(2).sum(-1).max())
        if n and z.shape[0]
        else 0.0
    )
    precise = kernel_dtype(sq_max, float(log_var), d, dtype)
    if precise != dtype:  # a narrow kernel: the expansion in z's dtype would be off by more than tolerated
        shift = centers.double().mean(0)
        zc, cc = z.double() - shift, centers.double() - shift
    log_var = log_var.to(zc.dtype)
    prec = torch.exp(-log_var)
    bias = (-0.5 * prec) * cc.pow(2).sum(-1)  # [N]
    center_chunk = min(n, max(1, max_elements // 64))
    row_chunk = max(1, max_elements // center_chunk)
    out = []
    for zb in zc.split(row_chunk):
        acc = torch.full((zb.shape[0],), float("-inf"), dtype=zc.dtype, device=z.device)
        for cb, bb in zip(cc.split(center_chunk), bias.split(center_chunk)):
            logits = torch.addmm(bb, zb, cb.T, alpha=float(prec))  # [r, c] = (z.c - |c|^2 / 2) / s^2
            acc = torch.logaddexp(acc, torch.logsumexp(logits, dim=1))
        out.append(acc - 0.5 * prec * zb.pow(2).sum(-1))
    return (torch.cat(out) + isotropic_log_normaliser(d, log_var) - math.log(n)).to(dtype)


def exemplar_mixture_log_prob(
    z: Tensor, centers: Tensor, ids: Tensor, log_var: Tensor, count: Tensor, index: Tensor | None = None
) -> Tensor:
    """log (1/count) sum_j N(z; c_j, sigma^2 I) over the given exemplars, each point's own one left out.

    Args:
        z: [B, d] codes.
        centers: [J, d] the exemplars' codes (re-encoded with gradient in training).
        ids: [J] their dataset indices.
        log_var: scalar log sigma^2.
        count: the mixture's normaliser, [1] or [B] (M, or M - 1 for a point that left itself out).
        index: [B] dataset indices of the points, for leave-one-out; None keeps every term.

    Returns:
        [B] log-densities, in z's dtype.
    """
    log_k = exemplar_log_kernel(z, centers, log_var)  # [B, J]
    mask = leave_one_out_mask(index, ids) if index is not None else None  # [B, J]
    return masked_log_mean_exp(log_k, mask, count).to(z.dtype)


class ExemplarPlan(NamedTuple):
    """A training step's exemplars, chosen without gradient (``ExemplarPrior.plan``)."""

    ids: Tensor  # [J] dataset indices of the exemplars re-encoded with gradient (sorted union, or all M)
    inputs: Tensor  # [J_r, D] this rank's share of their inputs, on the prior's device
    normaliser: Tensor  # [1] or [B]: M, or M - 1 for a point that left itself out
    codes: Tensor | None = None  # sparse-gradient exact mode: [M, d] the subset's codes, no gradient
    members: Tensor | None = None  # with codes: [M] the subset's dataset indices
    positions: Tensor | None = None  # with codes: [J] where ``ids`` sit among ``members``


class ExemplarPrior(Prior):
    """Parzen-window prior over encoded exemplars, with leave-one-out, subsampling and retrieval.

    Args:
        exemplars: [N, D] exemplar inputs (the grey training images), a tensor or an ``ExemplarStore``
            (shared with the training loop); not saved in checkpoints.
        latent_dim: d.
        num_exemplars: M, exemplars drawn per minibatch during training (None: N // 2).
        knn: k neighbours per point for retrieval augmented training; 0 for the exact prior over M.
        leave_one_out: mask each training point's own exemplar.
        search_backend: "auto", "faiss" or "torch" (see ``retrieval.knn_search``).
        search: retrieval during training, "exact" or "ivf" (see ``retrieval.SubsetSearch``; the recall
            of "ivf" is logged as ``search_recall``).
        nprobe: inverted lists visited per query with ``search="ivf"``.
        nlist: inverted lists of the index (None: about 2 sqrt(N)).
        grad_tolerance: exact mode (k = 0) only: None encodes all M exemplars with gradient
            (``exact_log_prob``); a value tol in [0, 1) encodes them without gradient and re-encodes with
            gradient only the exemplars carrying each point's mass but at most tol
            (``exact_log_prob_sparse_grad``; logged as ``grad_neglected_mass`` and ``grad_exemplars``).
    """

    def __init__(
        self,
        exemplars: Tensor | ExemplarStore,
        latent_dim: int,
        num_exemplars: int | None = None,
        knn: int = 10,
        leave_one_out: bool = True,
        search_backend: str = "auto",
        search: str = "exact",
        nprobe: int = 16,
        nlist: int | None = None,
        grad_tolerance: float | None = None,
    ) -> None:
        super().__init__(latent_dim)
        n = exemplars.shape[0]
        m = num_exemplars if num_exemplars is not None else max(1, n // 2)
        check_exemplar_counts(n, m, knn)
        check_search(search, nprobe)
        check_grad_tolerance(grad_tolerance, knn)
        self.num_exemplars, self.knn, self.leave_one_out = m, knn, leave_one_out
        self.grad_tolerance = grad_tolerance
        # the last sparse-gradient step: (largest dropped responsibility [] over the batch, |J|)
        self.grad_stats: tuple[Tensor, int] | None = None
        self.searcher = SubsetSearch(search, nprobe, nlist, search_backend)
        self.log_var = nn.Parameter(torch.zeros(()))  # log sigma^2, one scalar for all exemplars and dims
        # [N, D] exemplar inputs, held once (uint8 where they are 8-bit), not saved in checkpoints; rows
        # are gathered by id and moved to the prior's device
        self.store = (
            exemplars
            if isinstance(exemplars, ExemplarStore)
            else ExemplarStore.from_tensor(exemplars, compact=False)
        )
        self.cache = CodeCache()

    # -- exemplar set -------------------------------------------------------------------------------
    @property
    def num_total(self) -> int:
        """N, the size of the exemplar set."""
        return self.store.num_rows

    @property
    def exemplars(self) -> Tensor:
        """The [N, D] exemplar inputs as one float32 tensor (read whole from the store: for small sets;
        training gathers rows with ``store.gather``)."""
        return self.store.float()

    def exemplar_set(self) -> ExemplarStore:
        """The [N, D] exemplar inputs."""
        return self.store

    def set_exemplars(self, exemplars: Tensor | ExemplarStore) -> None:
        """Replace the exemplar set (e.g. add new data without retraining); invalidates the cache."""
        if exemplars.ndim != 2 or exemplars.shape[0] < 1:
            raise ConfigError(
                f"exemplars must be a non-empty [N, D] tensor, got shape {tuple(exemplars.shape)}"
            )
        self.store = (
            exemplars if isinstance(exemplars, ExemplarStore) else ExemplarStore.from_tensor(exemplars)
        )
        self.cache.invalidate()

    def gather(self, ids: Tensor) -> Tensor:
        """Exemplar inputs by dataset index: [J] -> [J, D] float32 on the prior's device."""
        return self.store.gather(ids).to(self.log_var.device)

    def refresh(self, encoder: Encoder) -> None:
        """Encode all exemplars into the code cache (an explicit call from the training loop)."""
        self.cache.refresh(encoder, self.store, self.log_var.device)

    # -- training-time pieces ------------------------------------------------------------------------
    def draw_subset(self, generator: torch.Generator | None = None) -> KeyedSubset:
        """M distinct exemplars, uniformly at random: a keyed permutation's first M (``KeyedSubset``),
        with O(1) membership tests and no O(N) work; its key is one draw from ``generator``."""
        g = generator if generator is not None else torch.default_generator
        return KeyedSubset.draw(self.num_total, self.num_exemplars, g)

    def _members(self, subset: Tensor | Subset) -> Tensor:
        """The subset's [M] dataset indices on the exemplars' device."""
        ids = subset if isinstance(subset, Tensor) else subset.members()
        return ids.to(self.log_var.device)

    def _normaliser(self, index: Tensor | None, subset: Tensor | Subset) -> Tensor:
        """Number of exemplars each point's mixture is averaged over: M, or M - 1 if it left itself out."""
        size = subset.shape[0] if isinstance(subset, Tensor) else subset_size(subset)
        device = self.log_var.device
        m = torch.full((1,), float(size), dtype=torch.float64, device=device)
        if index is None or not self.leave_one_out:
            return m
        inside = torch.isin(index, subset) if isinstance(subset, Tensor) else subset.contains(index)  # [B]
        return m - inside.to(device).double()  # [B]

    def _left_out(self, index: Tensor | None) -> Tensor | None:
        """The indices leave-one-out masks, or None when nothing is masked."""
        return index if self.leave_one_out else None

    @torch.no_grad()
    def encode_without_grad(self, encoder: Encoder, ids: Tensor, chunk: int = 8192) -> Tensor:
        """mu_phi of the exemplars ``ids`` [J] without gradient, ``chunk`` rows at a time: [J, d]. The
        encoder keeps its mode (the function ``planned_log_prob`` applies with gradient); in a distributed
        run every rank passes the same ids, encodes its shard and the codes are gathered."""
        mine = distributed.shard(ids)  # [J / W] this rank's part
        codes = [encoder.mean(self.gather(part)) for part in mine.split(chunk)] if mine.numel() else []
        if not codes:  # no share for this rank (J < W): it still joins the gather
            codes = [encoder.mean(self.gather(mine))]  # [0, d]
        return distributed.gather_rows(torch.cat(codes))  # [J, d]

    # -- a training step: the exemplars chosen without gradient (plan), then log p(z) with gradient ---------
    def _dense_plan(self, ids: Tensor, index: Tensor | None, subset: Tensor | Subset) -> ExemplarPlan:
        """The plan that re-encodes the exemplars ``ids`` [J] with gradient and mixes over them alone."""
        return ExemplarPlan(ids, self.gather(distributed.shard(ids)), self._normaliser(index, subset))

    @torch.no_grad()
    def _sparse_plan(
        self, z: Tensor, encoder: Encoder, index: Tensor | None, subset: Tensor | Subset, tolerance: float
    ) -> ExemplarPlan:
        """All M exemplars of ``subset`` encoded without gradient; the union J of the exemplars that carry
        each point's responsibility mass but at most ``tolerance`` (``mass_carrying_union``) is what the
        step re-encodes with gradient. Records ``grad_stats``."""
        members = self._members(subset)  # [M]
        codes = self.encode_without_grad(encoder, members)  # [M, d]
        left_out = self._left_out(index)
        mask = leave_one_out_mask(left_out, members) if left_out is not None else None  # [B, M]
        resp = responsibilities(exemplar_log_kernel(z, codes, self.log_var), mask)  # [B, M]
        positions, worst = self.mass_carrying_union(resp, tolerance)  # [J], []
        self.grad_stats = (worst, int(positions.numel()))
        ids = members[positions]  # [J]
        return ExemplarPlan(
            ids, self.gather(distributed.shard(ids)), self._normaliser(index, subset), codes, members,
            positions,
        )  # fmt: skip

    @property
    def plan_reads_codes(self) -> bool:
        """In training with retrieval (k > 0) or a gradient tolerance, the step's exemplars depend on z."""
        return self.training and (self.knn > 0 or self.grad_tolerance is not None)

    def plan(
        self, z: Tensor | None, encoder: Encoder, index: Tensor | None, generator: torch.Generator | None
    ) -> ExemplarPlan | None:
        """The step's exemplars (``Prior.plan``): the subset drawn from ``generator``, then the union
        retrieved for the codes z (k > 0), all M (exact), or the mass-carrying union (exact with
        ``grad_tolerance``); None in evaluation mode (the full prior over the cache)."""
        if not self.training:
            return None
        if self.leave_one_out and index is None:
            raise ValueError("leave-one-out training needs the dataset index of every point")
        if z is None and self.plan_reads_codes:
            raise ValueError("this exemplar prior chooses its exemplars from the codes z: pass them to plan")
        subset = self.draw_subset(generator)
        if z is None or not self.plan_reads_codes:  # exact: all M of the subset
            return self._dense_plan(self._members(subset), index, subset)
        if self.knn > 0:
            return self._dense_plan(self.retrieve(z.detach(), index, subset), index, subset)
        assert self.grad_tolerance is not None  # plan_reads_codes
        return self._sparse_plan(z.detach(), encoder, index, subset, self.grad_tolerance)

    def planned_log_prob(
        self, z: Tensor, encoder: Encoder, index: Tensor | None, plan: ExemplarPlan | None
    ) -> Tensor:
        """log p(z) [B] over the exemplars of ``plan``, re-encoded with gradient (in a distributed run each
        rank encodes its share and the codes are gathered with autograd, so each exemplar is encoded once
        and receives the gradient of every rank's loss); None: the full prior (evaluation mode).

        With the subset's no-grad codes in the plan (``grad_tolerance``), the kernel over all M is formed
        from them and the re-encoded exemplars' columns replace theirs: the exact mixture's value (the
        encoder is deterministic, the two codes agree to rounding), exact gradients for z and log sigma^2,
        and an encoder gradient that leaves out d log p(z_b) / d c_m = r_bm (z_b - c_m) / sigma^2 of the
        dropped exemplars only, total weight <= the tolerance per point."""
        if plan is None:
            return self.full_log_prob(z)
        centers = distributed.gather_rows_with_grad(encoder.mean(plan.inputs))  # [J, d]
        left_out = self._left_out(index)
        if plan.codes is None:
            return exemplar_mixture_log_prob(z, centers, plan.ids, self.log_var, plan.normaliser, left_out)
        assert plan.members is not None and plan.positions is not None
        mask = leave_one_out_mask(left_out, plan.members) if left_out is not None else None  # [B, M]
        log_k = exemplar_log_kernel(z, plan.codes, self.log_var)  # [B, M], gradient for z, log sigma^2
        log_k = log_k.index_copy(1, plan.positions, exemplar_log_kernel(z, centers, self.log_var))
        return masked_log_mean_exp(log_k, mask, plan.normaliser).to(z.dtype)

    def exact_log_prob(
        self, z: Tensor, encoder: Encoder, index: Tensor | None, subset: Tensor | Subset
    ) -> Tensor:
        """log p(z) over every exemplar of ``subset``, encoded with gradient: [B, d] -> [B]."""
        return self.planned_log_prob(
            z, encoder, index, self._dense_plan(self._members(subset), index, subset)
        )

    def mass_carrying_union(self, resp: Tensor, tolerance: float) -> tuple[Tensor, Tensor]:
        """The subset positions whose exemplars carry each point's responsibility but at most
        ``tolerance`` (``mass_carrying_components``), united over the batch and over every rank's rows (the
        same union everywhere): [B, M] -> ([J] int64 positions, sorted; [] the largest dropped mass of any
        point on any rank)."""
        keep, dropped = mass_carrying_components(resp, tolerance)  # [B, M], [B]
        mine = keep.any(0).nonzero().squeeze(-1)  # [J_r] this rank's positions
        union = torch.unique(distributed.gather_rows(mine))  # [J]
        worst = torch.cat([dropped, dropped.new_zeros(1)]).max().reshape(1)  # [1] (0 for an empty share)
        return union, distributed.gather_rows(worst).max()

    def exact_log_prob_sparse_grad(
        self, z: Tensor, encoder: Encoder, index: Tensor | None, subset: Tensor | Subset, tolerance: float
    ) -> Tensor:
        """``exact_log_prob``'s value, with the encoder's gradient only through the exemplars that carry
        the mass (all but at most ``tolerance`` of each point's responsibility; see ``planned_log_prob``):
        [B, d] -> [B]. ``grad_stats`` records the largest dropped mass and |J|."""
        plan = self._sparse_plan(z.detach(), encoder, index, subset, tolerance)
        return self.planned_log_prob(z, encoder, index, plan)

    def retrieve(self, z: Tensor, index: Tensor | None, subset: Tensor | Subset) -> Tensor:
        """Indices of the exemplars whose cached codes are nearest to each z within the subset.

        Each point gets k neighbours other than itself (k + 1 are fetched under leave-one-out), and the
        union over the batch (over every rank's rows in a distributed run) is returned: [U] int64 dataset
        indices, sorted.
        """
        size = subset.shape[0] if isinstance(subset, Tensor) else subset_size(subset)
        k = min(self.knn + (1 if self.leave_one_out and index is not None else 0), size)
        if z.shape[0] > 0:
            found = self.searcher.neighbours(z, subset, self.cache.get(), k)  # [B, k] dataset indices
        else:  # this rank's share of a small last batch is empty; it still joins the union below
            found = torch.zeros((0, k), dtype=torch.int64, device=z.device)
        # every rank's neighbours: the same union everywhere (sorted, as one process would form it)
        return torch.unique(distributed.gather_rows(found.reshape(-1).to(z.device)))  # [U]

    def knn_log_prob(
        self, z: Tensor, encoder: Encoder, index: Tensor | None, subset: Tensor | Subset
    ) -> Tensor:
        """Retrieval lower bound on ``exact_log_prob``: the mixture over the retrieved union only, with
        the full subset's weight 1 / (M - #left out). Every dropped term is positive, so the value is at
        most the exact mixture over the subset, and equal when the union covers it."""
        plan = self._dense_plan(self.retrieve(z.detach(), index, subset), index, subset)
        return self.planned_log_prob(z, encoder, index, plan)

    # -- the Prior interface -------------------------------------------------------------------------
    def log_prob(
        self,
        z: Tensor,
        encoder: Encoder,
        index: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Training mode: the step's plan (``plan``), then ``planned_log_prob``; evaluation mode: the full
        prior over all N cached codes."""
        return self.planned_log_prob(z, encoder, index, self.plan(z, encoder, index, generator))

    def full_log_prob(self, z: Tensor) -> Tensor:
        """The test-time prior over all N cached exemplar codes, no leave-one-out: [B, d] -> [B]."""
        return streaming_exemplar_log_prob(z, self.cache.get(), self.log_var.detach())

    def kernel_mixture(self) -> KernelMixture:
        """The test-time prior: equal weights over the N cached codes, kernel variance sigma^2."""
        return KernelMixture(self.cache.get(), self.log_var.detach())

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
        if self.searcher.search == "ivf" and self.searcher.recall is not None:
            metrics["search_recall"] = self.searcher.recall
        if self.grad_stats is not None:  # the last step of the sparse-gradient exact prior
            worst, size = self.grad_stats
            metrics.update(grad_neglected_mass=float(worst), grad_exemplars=size)
        return metrics
