"""fasttx.varlen_attention (reference backend): packed sequences equal padded attention."""

import importlib

import pytest
import torch
import torch.nn.functional as F

import fasttx
from fasttx.testing import key_padding_mask, random_tensor


def pack(lengths, heads, dim, seed, dtype=torch.float64):
    """Packed (total, H, E) rows, the cu_seqlens, and the padded (B, H, L, E) view."""
    total, max_len = sum(lengths), max(lengths)
    packed = random_tensor(total, heads, dim, dtype=dtype, seed=seed, requires_grad=True)
    cu_seqlens = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    return packed, cu_seqlens, max_len


def pad(packed, cu_seqlens, max_len):
    """(total, H, E) -> (B, H, max_len, E) with zeros after each sequence."""
    starts = cu_seqlens.tolist()
    rows = [packed[a:b] for a, b in zip(starts, starts[1:], strict=False)]
    padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    padded = torch.nn.functional.pad(padded, (0, 0, 0, 0, 0, max_len - padded.shape[1]))
    return padded.transpose(1, 2)


def unpad(padded, lengths):
    return torch.cat([padded[b, :, :n].transpose(0, 1) for b, n in enumerate(lengths)])


CASES = [
    ([1], [1], 1, 1, 8),
    ([7, 1, 12], [5, 9, 3], 2, 2, 40),
    ([4, 6], [4, 6], 4, 2, 16),
    ([3, 9, 2, 5], [11, 2, 7, 1], 3, 1, 24),
]


@pytest.mark.parametrize("lengths_q,lengths_k,heads,kv_heads,dim", CASES)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_packed_equals_padded(lengths_q, lengths_k, heads, kv_heads, dim, is_causal, dropout_p):
    q, cu_q, max_q = pack(lengths_q, heads, dim, seed=1)
    k, cu_k, max_k = pack(lengths_k, kv_heads, dim, seed=2)
    v, _, _ = pack(lengths_k, kv_heads, dim, seed=3)
    torch.manual_seed(11)
    out = fasttx.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=dropout_p,
                                  is_causal=is_causal)
    # padded reference: the same dropout counters by construction (dense layout of the
    # padded batch), so the same seed drops the same elements
    mask = key_padding_mask(lengths_k, max_k)
    torch.manual_seed(11)
    dense = fasttx.scaled_dot_product_attention(
        pad(q, cu_q, max_q), pad(k, cu_k, max_k), pad(v, cu_k, max_k), attn_mask=mask,
        is_causal=is_causal, dropout_p=dropout_p, enable_gqa=True)
    expected = unpad(dense, lengths_q)
    torch.testing.assert_close(out, expected)
    if dropout_p == 0.0:  # and each sequence on its own equals torch's SDPA
        for b in range(len(lengths_q)):
            rows_q = slice(int(cu_q[b]), int(cu_q[b + 1]))
            rows_k = slice(int(cu_k[b]), int(cu_k[b + 1]))
            torch.testing.assert_close(out[rows_q].transpose(0, 1), F.scaled_dot_product_attention(
                q[rows_q].transpose(0, 1), k[rows_k].transpose(0, 1), v[rows_k].transpose(0, 1),
                is_causal=is_causal, enable_gqa=True))
    grad = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), grad),
                         torch.autograd.grad(expected, (q, k, v), grad), strict=True):
        torch.testing.assert_close(got, want)


def test_gradcheck():
    q, cu_q, max_q = pack([2, 3], 2, 4, seed=4)
    k, cu_k, max_k = pack([3, 1], 1, 4, seed=5)
    v, _, _ = pack([3, 1], 1, 4, seed=6)
    seed = torch.tensor([3])

    def fn(q, k, v):
        return torch.ops.fasttx.varlen_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, seed,
                                                         0.2, True, 0.5, "reference")[0]

    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("change,word", [
    (dict(cu_seqlens_q=torch.tensor([0, 2, 5])), "cu_seqlens_q"),  # int64
    (dict(cu_seqlens_q=[0, 2, 5]), "cu_seqlens_q must be a torch.Tensor"),
    (dict(q=torch.nested.nested_tensor([torch.randn(2, 2, 4), torch.randn(3, 2, 4)])),
     "q must be a dense"),
    (dict(cu_seqlens_q=torch.tensor([0, 2, 4], dtype=torch.int32)), "cu_seqlens_q"),
    (dict(cu_seqlens_k=torch.tensor([1, 2, 5], dtype=torch.int32)), "cu_seqlens_k"),
    (dict(cu_seqlens_k=torch.tensor([0, 4], dtype=torch.int32)), "cu_seqlens_k"),
    (dict(max_seqlen_q=2), "max_seqlen_q"),
    (dict(max_seqlen_k=0), "max_seqlen_k"),
    (dict(max_seqlen_k=4.0), "max_seqlen_k"),
    (dict(is_causal=None), "is_causal"),
    (dict(q=torch.randn(5, 0, 4, dtype=torch.float64)), "q"),
    (dict(q=torch.randn(5, 2, 8, dtype=torch.float64)), "k"),
    (dict(k=torch.randn(5, 3, 4, dtype=torch.float64), v=torch.randn(5, 3, 4,
                                                                       dtype=torch.float64)),
     "divide"),
])
def test_bad_inputs_name_the_argument(change, word):
    args = dict(q=torch.randn(5, 2, 4, dtype=torch.float64),
                k=torch.randn(5, 2, 4, dtype=torch.float64),
                v=torch.randn(5, 2, 4, dtype=torch.float64),
                cu_seqlens_q=torch.tensor([0, 2, 5], dtype=torch.int32),
                cu_seqlens_k=torch.tensor([0, 1, 5], dtype=torch.int32),
                max_seqlen_q=3, max_seqlen_k=4)
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=word):
        fasttx.varlen_attention(**args)


def test_cu_seqlens_values_are_read_once_per_tensor_until_it_changes(monkeypatch):
    """Their values are checked on every device; on a GPU reading them costs a sync, so a
    tensor that passed is not read again (the layers of a model share it) unless modified."""
    varlen_module = importlib.import_module("fasttx.ops.varlen_attention")
    reads = []
    remember = varlen_module._remember_checked
    monkeypatch.setattr(varlen_module, "_remember_checked",
                        lambda *args: reads.append(args[0]) or remember(*args))
    q, k, v = (torch.randn(5, 2, 4, dtype=torch.float64) for _ in range(3))
    cu_q = torch.tensor([0, 2, 5], dtype=torch.int32)
    cu_k = torch.tensor([0, 1, 5], dtype=torch.int32)
    for _ in range(3):
        fasttx.varlen_attention(q, k, v, cu_q, cu_k, 3, 4, backend="reference")
    assert [id(t) for t in reads] == [id(cu_q), id(cu_k)]
    with pytest.raises(ValueError, match="max_seqlen_k"):  # same tensor, another bound
        fasttx.varlen_attention(q, k, v, cu_q, cu_k, 3, 3, backend="reference")
    cu_k[1] = 4  # modified in place: read again, and refused
    with pytest.raises(ValueError, match="max_seqlen_k"):
        fasttx.varlen_attention(q, k, v, cu_q, cu_k, 3, 2, backend="reference")
    cu_k[1] = 6
    with pytest.raises(ValueError, match="cu_seqlens_k must rise"):
        fasttx.varlen_attention(q, k, v, cu_q, cu_k, 3, 6, backend="reference")
    key = id(cu_q)
    del cu_q, reads[:]
    assert key not in varlen_module._checked_cu_seqlens  # forgotten once freed
    with torch.inference_mode():  # inference tensors count no versions: read every call
        cu = torch.tensor([0, 2, 5], dtype=torch.int32)
        for _ in range(2):
            fasttx.varlen_attention(q, k, v, cu, cu, 3, 3, backend="reference")
        cu[1] = 4
        with pytest.raises(ValueError, match="max_seqlen_q"):
            fasttx.varlen_attention(q, k, v, cu, cu, 3, 4, backend="reference")
    assert [id(t) for t in reads] == [id(cu)] * 4  # q's and k's, both calls
    assert id(cu) not in varlen_module._checked_cu_seqlens
