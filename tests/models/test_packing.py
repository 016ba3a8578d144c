"""PackedBatch and Seq2SeqTransformer.loss_packed: the padding-free loss equals the padded one."""

import pytest
import torch

import fasttx
import fasttx.reference.attention
import fasttx.reference.varlen_attention
from fasttx.models import PackedBatch, Seq2SeqTransformer, TransformerConfig

NORMS = pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    config = TransformerConfig.tiny(vocab_size=20, max_len=24, label_smoothing=0.1,
                                    **overrides)
    return Seq2SeqTransformer(config)


def random_pairs(batch_size, seed=0, longest=9):
    """(src, tgt) lists: src = tokens + [eos], tgt = [bos] + tokens + [eos], odd lengths."""
    generator = torch.Generator().manual_seed(seed)

    def tokens():
        length = int(torch.randint(0, longest + 1, (), generator=generator))
        return torch.randint(3, 20, (length,), generator=generator).tolist()
    return ([tokens() + [2] for _ in range(batch_size)],
            [[1] + tokens() + [2] for _ in range(batch_size)])


def padded(sequences):
    """Right-pads with 0 (pad_id) to (B, L)."""
    longest = max(map(len, sequences))
    return torch.tensor([list(s) + [0] * (longest - len(s)) for s in sequences])


def loss_and_grads(model, compute):
    model.zero_grad()
    out = compute()
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters()}


def check_packed_matches_padded(model, src, tgt, rtol=1e-4, atol=1e-5):
    padded_out, padded_grads = loss_and_grads(model, lambda: model.loss(padded(src),
                                                                        padded(tgt)))
    packed_out, packed_grads = loss_and_grads(
        model, lambda: model.loss_packed(PackedBatch.from_sequences(src, tgt)))
    torch.testing.assert_close(packed_out.loss, padded_out.loss, rtol=0, atol=atol)
    torch.testing.assert_close(packed_out.nll, padded_out.nll, rtol=0, atol=atol)
    assert packed_out.num_tokens == padded_out.num_tokens == sum(len(t) - 1 for t in tgt)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=rtol, atol=atol, msg=name)


# ----------------------------------------------------------------------------- layout


def test_from_sequences_layout():
    batch = PackedBatch.from_sequences([[5, 6, 7, 2], [4, 2], [3, 3, 3, 3, 3, 9, 2]],
                                       [[1, 5, 6, 2], [1, 4, 8, 9, 2], [1, 3, 2]])
    expected = dict(
        src=[5, 6, 7, 2, 4, 2, 3, 3, 3, 3, 3, 9, 2],
        src_positions=[0, 1, 2, 3, 0, 1, 0, 1, 2, 3, 4, 5, 6],
        cu_src=[0, 4, 6, 13],
        tgt_in=[1, 5, 6, 1, 4, 8, 9, 1, 3],
        tgt_out=[5, 6, 2, 4, 8, 9, 2, 3, 2],
        tgt_positions=[0, 1, 2, 0, 1, 2, 3, 0, 1],
        cu_tgt=[0, 3, 7, 9])
    for name, values in expected.items():
        tensor = getattr(batch, name)
        assert tensor.dtype == (torch.int32 if name.startswith("cu_") else torch.int64), name
        assert tensor.tolist() == values, name
    assert (batch.max_src, batch.max_tgt) == (7, 4)
    assert (batch.num_sequences, batch.num_tokens) == (3, 9)
    assert batch.device == torch.device("cpu")


def test_from_sequences_takes_tensors_and_moves_in_one_piece():
    src, tgt = random_pairs(5, seed=3)
    lists = PackedBatch.from_sequences(src, tgt)
    tensors = PackedBatch.from_sequences([torch.tensor(s, dtype=torch.int32) for s in src],
                                         [torch.tensor(t) for t in tgt], device="meta")
    for name in ("src", "src_positions", "cu_src", "tgt_in", "tgt_out", "tgt_positions",
                 "cu_tgt"):  # meta tensors hold no values: compare shapes and dtypes
        moved, kept = getattr(tensors, name), getattr(lists, name)
        assert moved.device == torch.device("meta"), name
        assert (moved.shape, moved.dtype) == (kept.shape, kept.dtype), name
    assert (tensors.max_src, tensors.max_tgt) == (lists.max_src, lists.max_tgt)
    same = PackedBatch.from_sequences([torch.tensor(s) for s in src],
                                      [torch.tensor(t) for t in tgt])
    assert all(torch.equal(getattr(same, name), getattr(lists, name))
               for name in ("src", "src_positions", "tgt_in", "tgt_out", "tgt_positions"))
    assert lists.to("cpu") is lists


# ----------------------------------------------------------------------------- the loss


@NORMS
@pytest.mark.parametrize("batch_size", [1, 7])
def test_packed_loss_and_gradients_match_padded(norm_first, batch_size, one_thread):
    model = make_model(norm_first=norm_first).train()  # dropout 0: training mode is exact
    src, tgt = random_pairs(batch_size, seed=batch_size)
    with one_thread(), fasttx.use_backend("reference"):
        check_packed_matches_padded(model, src, tgt)


def test_packed_loss_matches_padded_under_triton(one_thread):
    model = make_model(norm_first=True, num_encoder_layers=1, num_decoder_layers=1)
    src, tgt = [[4, 5, 6, 2], [7, 2], [8, 9, 10, 11, 12, 2]], [[1, 4, 2], [1, 7, 8, 9, 2],
                                                                [1, 3, 2]]
    with one_thread(), fasttx.use_backend("triton"):
        check_packed_matches_padded(model, src, tgt, rtol=1e-3, atol=1e-4)


def test_packed_path_attends_through_varlen_attention_only(count_reference_calls):
    calls = count_reference_calls("attention", "varlen_attention")
    model = make_model().eval()
    with torch.no_grad(), fasttx.use_backend("reference"):
        model.loss_packed(PackedBatch.from_sequences(*random_pairs(3)))
    # encoder: 2 self-attentions; decoder: 2 x (self-attention, cross-attention)
    assert calls == {"attention": 0, "varlen_attention": 2 + 4}


def test_packed_path_calls_the_layers_as_modules():
    """FSDP unshards a layer's parameters in its forward hooks: they must run."""
    model = make_model().eval()
    called = []
    for name, layer in [*model.encoder.named_children(), *model.decoder.named_children()]:
        layer.register_forward_pre_hook(lambda module, args, _name=name: called.append(_name))
    with torch.no_grad():
        model.loss_packed(PackedBatch.from_sequences(*random_pairs(2)))
    assert called == ["0", "1", "0", "1"]


def test_packed_loss_is_the_token_weighted_mean_of_each_pair_alone():
    model = make_model().eval()
    src, tgt = random_pairs(4, seed=11)
    with torch.no_grad():
        out = model.loss_packed(PackedBatch.from_sequences(src, tgt))
        total = 0.0
        for s, t in zip(src, tgt, strict=True):
            alone = model.loss_packed(PackedBatch.from_sequences([s], [t]))
            total += alone.loss * alone.num_tokens
    torch.testing.assert_close(out.loss, total / out.num_tokens)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("src, tgt, error, match", [
    ([], [], ValueError, "at least one sequence"),
    ([[4, 2]], [[1, 4, 2], [1, 2]], ValueError, "same number of sequences, got 1 and 2"),
    ([[4, 2], []], [[1, 4, 2], [1, 2]], ValueError, r"src\[1\] has 0 token\(s\)"),
    ([[4, 2], [2]], [[1, 4, 2], [1]], ValueError, r"tgt\[1\] has 1 token\(s\): .*bos and eos"),
    ("ab", "cd", TypeError, "sequences .* of token-id sequences"),
    ([4, 2], [[1, 4, 2], [1, 2]], TypeError, "src must be a sequence of token-id sequences"),
    ([[4.0, 2.0]], [[1, 4, 2]], TypeError, "src must hold int token ids.*float"),
    ([[4, 2]], [[1, "a", 2]], TypeError, "tgt must hold int token ids.*str"),
    ([[[4], [2]]], [[1, 4, 2]], TypeError, "src must hold int token ids, one level deep"),
    ([torch.tensor([4.0, 2.0])], [torch.tensor([1, 2])], TypeError,
     "src must hold integer token ids, got torch.float32"),
    ([torch.tensor([[4, 2]])], [torch.tensor([1, 2])], TypeError, r"src .* 1-D tensors"),
])
def test_from_sequences_rejects_bad_input(src, tgt, error, match):
    with pytest.raises(error, match=match):
        PackedBatch.from_sequences(src, tgt)


def test_constructor_checks_shapes_and_dtypes():
    batch = PackedBatch.from_sequences([[4, 2]], [[1, 4, 2]])
    fields = {name: getattr(batch, name) for name in batch.__dataclass_fields__}
    with pytest.raises(TypeError, match=r"PackedBatch.cu_src must be a 1-D torch.int32"):
        PackedBatch(**{**fields, "cu_src": batch.cu_src.long()})
    with pytest.raises(ValueError, match="tgt_out must have tgt_in's shape"):
        PackedBatch(**{**fields, "tgt_out": batch.tgt_out[:1]})
    with pytest.raises(ValueError, match="max_tgt must be a positive int"):
        PackedBatch(**{**fields, "max_tgt": 0})


def test_loss_packed_rejects_bad_batches():
    model = make_model()
    with pytest.raises(TypeError, match="batch must be a PackedBatch"):
        model.loss_packed((torch.tensor([4, 2]), torch.tensor([1, 4, 2])))
    with pytest.raises(ValueError, match=r"batch.src holds token id 20, outside \[0, "):
        model.loss_packed(PackedBatch.from_sequences([[20, 2]], [[1, 4, 2]]))
    with pytest.raises(ValueError, match="batch.tgt_out holds token id -1"):
        model.loss_packed(PackedBatch.from_sequences([[4, 2]], [[1, 4, -1]]))
    with pytest.raises(ValueError, match="longest src reaches position 25, beyond max_len=24"):
        model.loss_packed(PackedBatch.from_sequences([[4] * 24 + [2]], [[1, 4, 2]]))
    # As model.loss: the whole target (bos ... eos) must fit, though eos is no input.
    with pytest.raises(ValueError, match="longest tgt reaches position 25, beyond max_len"):
        model.loss_packed(PackedBatch.from_sequences([[4, 2]], [[1] + [4] * 23 + [2]]))
    model.loss_packed(PackedBatch.from_sequences([[4] * 23 + [2]], [[1] + [4] * 22 + [2]]))
