"""How an evaluation scores the prior: in full, or truncated to each test point's nearest exemplars.

``PriorScoring`` is built once per evaluation from the prior and the evaluation's settings; it hands the
importance sampler a scorer (or certified bounds) per batch of test points. A prior that is a kernel
mixture (``Prior.kernel_mixture``, the exemplar prior) can be truncated; every other prior is scored with
its ``log_prob``. Nothing is written onto the prior.
"""

from __future__ import annotations

from torch import Tensor

from exemplar_vae.evaluation.certify import CertifyStats, CodeTree, TruncationBounds, build_code_tree
from exemplar_vae.evaluation.truncation import nearest_candidates, truncated_scorer
from exemplar_vae.interfaces import Encoder
from exemplar_vae.objectives.likelihood import Bounds, Scorer, exact_prior_bounds, exact_prior_scorer
from exemplar_vae.priors import Prior


class PriorScoring:
    """The prior's part of the importance weights for one evaluation.

    Args:
        prior: the prior, in eval mode and refreshed.
        encoder: the encoder it was refreshed with (for priors scored with ``log_prob``).
        candidates: keep the K mixture components nearest each test point's encoder mean (a lower bound);
            None, or K >= N, or a prior that is not a kernel mixture: score the full prior.
        tolerance: with ``bounds``, the certified gap to reach per test point (nats).
        budget: with ``bounds``, the largest fraction of the N components evaluated exactly per point.
    """

    def __init__(
        self,
        prior: Prior,
        encoder: Encoder,
        candidates: int | None = None,
        tolerance: float = 0.01,
        budget: float = 0.5,
    ) -> None:
        self.prior, self.encoder, self.tolerance, self.budget = prior, encoder, tolerance, budget
        mixture = prior.kernel_mixture() if not prior.training else None
        n = mixture.centers.shape[0] if mixture is not None else 0
        self.truncating = mixture is not None and candidates is not None and candidates < n
        self.mixture = mixture if self.truncating else None
        self.candidates = candidates if self.truncating else None
        self.stats = CertifyStats()  # work done by ``bounds``
        self._tree: CodeTree | None = None

    def scorer(self, mean: Tensor) -> Scorer:
        """f(z [S, B, d]) -> log p(z) [S, B] for the test points whose encoder means are ``mean`` [B, d]."""
        if self.mixture is None or self.candidates is None:
            return exact_prior_scorer(self.prior, self.encoder)(mean)
        return truncated_scorer(self.mixture, mean, self.candidates)

    def bounds(self, mean: Tensor) -> Bounds:
        """(lower, upper) bounds on log p(z): equal for the full prior, the truncated value and a
        certified upper bound (``evaluation.certify``) under truncation."""
        if self.mixture is None or self.candidates is None:
            return exact_prior_bounds(self.prior, self.encoder)(mean)
        if self._tree is None:  # one tree per evaluation: the cache does not change during it
            self._tree = build_code_tree(self.mixture.centers)
        nearest = nearest_candidates(self.mixture, mean, self.candidates)  # [B, K]
        return TruncationBounds(
            self.mixture, self._tree, mean, nearest, self.tolerance, self.budget, self.stats
        )
