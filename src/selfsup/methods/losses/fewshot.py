"""Episodic few-shot classifiers as pure functions of embeddings: Prototypical Networks' and the
CrossTransformer's logits over an episode's classes (cross-entropy of these logits is the loss)."""

from __future__ import annotations

import torch

from selfsup.methods.losses.precision import at_least_float32


def class_means(support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """``[n_way, ...]``: the mean of the support rows of each label ``0..n_way-1`` (Snell et al. 2017, Eq. 1)."""
    flat = support.flatten(1)
    sums = flat.new_zeros(n_way, flat.shape[1]).index_add(0, support_labels.long(), flat)
    counts = torch.bincount(support_labels.long(), minlength=n_way).clamp_min(1).to(flat.dtype)
    return (sums / counts[:, None]).view(n_way, *support.shape[1:])


def prototypical_logits(query: torch.Tensor, support: torch.Tensor, support_labels: torch.Tensor,
                        n_way: int) -> torch.Tensor:
    """``[Q, n_way]`` logits ``-||f(x) - c_k||^2`` of Prototypical Networks (Snell et al. 2017, Eq. 2 with the
    squared Euclidean distance of Sec. 2.7), ``c_k`` the class means of ``support`` ``[S, D]``."""
    query, support = at_least_float32(query), at_least_float32(support)
    protos = class_means(support, support_labels, n_way)
    return -(query[:, None, :] - protos[None, :, :]).pow(2).sum(-1)


def crosstransformer_attention(query_keys: torch.Tensor, support_keys: torch.Tensor, support_labels: torch.Tensor,
                               n_way: int) -> list[torch.Tensor]:
    """One ``[Q, P, S_c, M]`` attention per class (Doersch et al. 2020, Eq. 2): for query image ``q`` at
    position ``p``, ``softmax`` of ``k_{jm} . q_p / sqrt(d)`` jointly over the ``M`` positions of all
    ``S_c`` support images ``j`` of the class. ``query_keys`` ``[Q, P, d]``, ``support_keys`` ``[S, M, d]``."""
    query_keys, support_keys = at_least_float32(query_keys), at_least_float32(support_keys)
    scale = query_keys.shape[-1] ** -0.5
    out = []
    for c in range(n_way):
        keys = support_keys[support_labels == c]  # [S_c, M, d]
        logits = torch.einsum("qpd,smd->qpsm", query_keys, keys) * scale
        q, p, s, m = logits.shape
        out.append(logits.reshape(q, p, s * m).softmax(-1).view(q, p, s, m))
    return out


def crosstransformer_logits(query_keys: torch.Tensor, query_values: torch.Tensor, support_keys: torch.Tensor,
                            support_values: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """``[Q, n_way]`` logits ``-d(x_q, c)`` of the CrossTransformer (Doersch et al. 2020, Eqs. 2-4).

    The query-aligned prototype of class ``c`` at query position ``p`` is ``t_cp = sum_{jm} a_{jmp} v_{jm}``
    (attention of :func:`crosstransformer_attention`, support values ``v`` ``[S, M, dv]``); the distance
    ``d = 1/P sum_p ||w_p - t_cp||^2`` with the query's values ``w`` ``[Q, P, dv]``, summed over positions
    and divided by their number ``P = H * W`` (the official code's ``reduce_sum / (h * w)``).
    """
    query_values, support_values = at_least_float32(query_values), at_least_float32(support_values)
    attention = crosstransformer_attention(query_keys, support_keys, support_labels, n_way)
    distances = []
    for c, attn in enumerate(attention):
        values = support_values[support_labels == c]  # [S_c, M, dv]
        aligned = torch.einsum("qpsm,smv->qpv", attn, values)  # [Q, P, dv]
        distances.append((query_values - aligned).pow(2).sum((1, 2)) / query_values.shape[1])
    return -torch.stack(distances, dim=1)
