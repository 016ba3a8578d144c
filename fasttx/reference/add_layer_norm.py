"""Reference residual add + dropout + LayerNorm.

Shapes: x, residual (N, D) (rows flattened by the functional API); weight, bias (D,) or None.

Forward, step by step (statistics in fp32, fp64 for fp64 inputs):
    s = residual + dropout(x)       dropout(x) = x * keep / (1 - p); no residual: s = dropout(x)
                                    rounded to the stream dtype (the residual's, else x's)
    mean = s.mean(-1); rstd = 1 / sqrt(s.var(-1, unbiased=False) + eps)
    y = (s - mean) * rstd * weight + bias

The statistics are a shifted two-pass: see ``shifted_row_statistics``.

Dropout counter layout: element (n, d) of x has counter n * D + d.
"""

from __future__ import annotations

import torch

from fasttx.reference._common import accumulation_dtype, dropout_scale


def shifted_row_statistics(rows):
    """Returns s - mean (N, D), mean and the biased variance (N,) of rows s (N, D).

    Reduction strategy: a shifted two-pass. Each row is shifted by its first element K
    (s - K is exact for s within a factor 2 of K), then mean' = mean(s - K) and
    var = mean((s - K - mean')^2) are taken over the shifted values, and mean = K + mean'.
    A constant row shifts to exact zeros, so s - mean is exactly 0 and y exactly the bias
    (as F.layer_norm gives) whatever eps; unshifted, fl(mean(s)) may miss the constant by an
    ulp, which rstd = 1 / sqrt(eps) magnifies (1e6 at BERT's eps = 1e-12). For a row far
    from zero (mean / std ~ 1e4) the shifted values are of the size of the spread, so the
    mean and the deviations keep their accuracy.
    """
    shifted = rows - rows[:, :1]
    shifted_mean = shifted.mean(-1, keepdim=True)
    centred = shifted - shifted_mean
    mean = (rows[:, :1] + shifted_mean).squeeze(-1)
    return centred, mean, centred.square().mean(-1)


def add_layer_norm_forward(x, residual, weight, bias, eps, dropout_seed, dropout_p):
    """Returns y (N, D) in x's dtype, s (N, D) in the residual's dtype, mean and rstd (N,)."""
    acc = accumulation_dtype(x.dtype)
    stream_dtype = x.dtype if residual is None else residual.dtype
    summed = x.to(acc, copy=True)  # s is an output: it must not alias x
    keep_scale = dropout_scale(x.shape, dropout_seed, dropout_p, x.device)
    if keep_scale is not None:
        summed = summed * keep_scale
    if residual is not None:
        summed = summed + residual.to(acc)
    # statistics of s as returned (rounded to the stream dtype), which the backward reads
    summed = summed.to(stream_dtype).to(acc)
    centred, mean, variance = shifted_row_statistics(summed)
    rstd = torch.rsqrt(variance + eps)
    y = centred * rstd.unsqueeze(-1)
    if weight is not None:
        y = y * weight.to(acc)
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype), summed.to(stream_dtype), mean, rstd


def add_layer_norm_backward(grad_y, grad_residual_out, residual_out, weight, bias, mean, rstd,
                            dropout_seed, dropout_p, has_residual):
    """Returns dx, dresidual, dweight, dbias (empty, shape (0,), where there is no such input).

        xhat = (s - mean) * rstd,  g = dy * weight
        ds = rstd * (g - mean(g) - xhat * mean(g * xhat)) + d(s returned)
        dresidual = ds;  dx = ds * keep / (1 - p)
        dweight = sum_rows(dy * xhat);  dbias = sum_rows(dy)
    """
    acc = mean.dtype
    dy = grad_y.to(acc)
    xhat = (residual_out.to(acc) - mean.unsqueeze(-1)) * rstd.unsqueeze(-1)
    g = dy if weight is None else dy * weight.to(acc)
    grad_s = rstd.unsqueeze(-1) * (
        g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    if grad_residual_out is not None:
        grad_s = grad_s + grad_residual_out.to(acc)
    keep_scale = dropout_scale(grad_s.shape, dropout_seed, dropout_p, grad_s.device)
    # dx and dresidual are separate outputs: they must not alias each other
    grad_x = grad_s.clone() if keep_scale is None else grad_s * keep_scale
    return (
        grad_x.to(grad_y.dtype),
        grad_s.to(residual_out.dtype) if has_residual else grad_y.new_empty((0,)),
        (dy * xhat).sum(0).to(weight.dtype) if weight is not None else grad_y.new_empty((0,)),
        dy.sum(0).to(bias.dtype) if bias is not None else grad_y.new_empty((0,)),
    )
