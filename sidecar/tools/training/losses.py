"""Losses in plain torch: pointwise BCE, listwise LambdaLoss (NDCG-Loss2++), in-batch contrastive."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pointwise: graded labels already mapped to [0, 1]."""
    return F.binary_cross_entropy_with_logits(logits, labels)


def lambda_loss(scores: torch.Tensor, grades: torch.Tensor, mu: float = 10.0, sigma: float = 1.0) -> torch.Tensor:
    """LambdaLoss with the NDCG-Loss2++ weighting (Wang et al., 2018) for lists of one query each.

    ``scores`` and ``grades`` are [lists, items]; items with grade < 0 are padding.
    """
    valid = grades >= 0
    g = grades.clamp(min=0).float()
    # Ranks by the current scores (padding last), and the ideal DCG for the gains.
    masked = scores.masked_fill(~valid, float("-inf"))
    order = masked.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(1, scores.shape[1] + 1, device=scores.device).expand_as(order))
    gains = (2.0**g - 1.0) * valid
    ideal = gains.sort(dim=1, descending=True).values
    discounts = 1.0 / torch.log2(torch.arange(2, scores.shape[1] + 2, device=scores.device).float())
    max_dcg = (ideal * discounts).sum(dim=1, keepdim=True).clamp(min=1e-10)
    G = gains / max_dcg
    D = torch.log2(1.0 + ranks.float())

    # Pairs (i, j) with grade_i > grade_j, both real.
    pairs = (g.unsqueeze(2) > g.unsqueeze(1)) & valid.unsqueeze(2) & valid.unsqueeze(1)
    rank_diff = (ranks.unsqueeze(2) - ranks.unsqueeze(1)).abs().float()
    rho = (1.0 / torch.log2(1.0 + rank_diff.clamp(min=1)) - 1.0 / torch.log2(2.0 + rank_diff.clamp(min=1))).abs()
    rho = torch.where(rank_diff > 0, rho, torch.zeros_like(rho))
    delta = (1.0 / D.unsqueeze(2) - 1.0 / D.unsqueeze(1)).abs()
    weight = (rho + mu * delta) * (G.unsqueeze(2) - G.unsqueeze(1)).abs()
    diff = (scores.unsqueeze(2) - scores.unsqueeze(1)).clamp(-50, 50)
    losses = -F.logsigmoid(sigma * diff) * weight.detach()
    return losses[pairs].sum() / max(1, int(valid.any(dim=1).sum()))


def contrastive(
    queries: torch.Tensor,
    docs: torch.Tensor,
    positive_of: torch.Tensor,
    row_qids: torch.Tensor,
    doc_qids: torch.Tensor,
    scale: float = 20.0,
) -> torch.Tensor:
    """InfoNCE over in-batch and mined hard negatives.

    ``queries`` [Q, H] and ``docs`` [N, H] are normalised embeddings; ``positive_of[r]`` is the column of row r's
    positive; ``row_qids`` [Q] and ``doc_qids`` [N] say which query a row asks and which query a document is a
    judged positive of (-1: none). Another positive of the row's own query is masked out, never a negative.
    """
    sims = queries @ docs.T * scale
    same = doc_qids.unsqueeze(0) == row_qids.unsqueeze(1)
    rows = torch.arange(queries.shape[0], device=queries.device)
    same[rows, positive_of] = False
    return F.cross_entropy(sims.masked_fill(same, float("-inf")), positive_of)
