"""MLP heads shared by every method (projectors, predictors)."""

from __future__ import annotations

from torch import nn

from selfsup.models.norm import make_norm


def mlp(in_dim: int, hidden_dim: int, out_dim: int, *, num_layers: int = 2,
        norm: str = "batchnorm", last_norm: bool = False, last_bias: bool = True) -> nn.Sequential:
    """``num_layers`` Linear layers with norm + ReLU between them: BYOL's Linear-BN-ReLU-Linear at 2.

    ``last_norm`` appends a BatchNorm without affine parameters after the output (SimSiam's
    projector, Barlow Twins' embeddings use such a layer).
    """
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=norm == "none"), make_norm(norm, hidden_dim, dims=1),
                   nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=last_bias))
    if last_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)
