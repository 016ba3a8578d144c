"""Seq2SeqTransformer: shapes, masking, the loss, tied embeddings, cached decoding."""

import pytest
import torch
import torch.nn.functional as F

import fasttx
import fasttx.reference.add_layer_norm
import fasttx.reference.attention
import fasttx.reference.feed_forward
from fasttx import backends
from fasttx.models import CopyTask, KVCache, Seq2SeqTransformer, TransformerConfig
from fasttx.train import Trainer, TrainOptions

NORMS = pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])


def make_model(seed=0, dtype=torch.float64, **overrides):
    torch.manual_seed(seed)
    config = TransformerConfig.tiny(**{"dropout": 0.0, **overrides})
    return Seq2SeqTransformer(config).to(dtype).eval()


def make_batch(model, batch_size=5, seed=0):
    return CopyTask.for_config(model.config).sample(
        batch_size, torch.Generator().manual_seed(seed))


def shuffled(src, seed):
    """A source of the same padding layout with other symbols (a different 'translation')."""
    generator = torch.Generator().manual_seed(seed)
    symbols = torch.randint(3, 16, src.shape, generator=generator)
    return torch.where(src > 2, symbols, src)


@NORMS
def test_forward_shapes(norm_first):
    model = make_model(norm_first=norm_first)
    src, tgt = make_batch(model)
    logits = model(src, tgt[:, :-1])
    assert logits.shape == (src.shape[0], tgt.shape[1] - 1, model.config.vocab_size)
    memory, src_mask = model.encode(src)
    assert memory.shape == (*src.shape, model.config.d_model)
    assert src_mask.shape == (src.shape[0], 1, 1, src.shape[1]) and src_mask.dtype == torch.bool
    assert torch.isfinite(logits).all()


def test_pre_norm_has_input_norms_and_post_norm_does_not():
    post = dict(make_model().named_parameters())
    pre = dict(make_model(norm_first=True).named_parameters())
    assert set(pre) - set(post) == {f"{s}_input_norm.{p}" for s in ("encoder", "decoder")
                                    for p in ("weight", "bias")}


def test_embeddings_are_tied_and_positions_are_a_buffer():
    model = make_model()
    config = model.config
    shaped_like_embedding = [n for n, p in model.named_parameters()
                             if p.shape == (config.vocab_size, config.d_model)]
    assert shaped_like_embedding == ["embedding.weight"]
    assert "positions" not in dict(model.named_parameters())
    assert "positions" not in model.state_dict()
    assert model.positions.shape == (config.max_len, config.d_model)
    # Token 15 appears in no input, yet its embedding row gets a gradient: the output
    # projection is the embedding.
    src = torch.tensor([[3, 4, 5, 2]])
    tgt = torch.tensor([[1, 3, 4, 5, 2]])
    model.train().loss(src, tgt).loss.backward()
    assert model.embedding.weight.grad[15].abs().sum() > 0
    logits = model(src, tgt[:, :-1])
    with torch.no_grad():
        model.embedding.weight[15] += torch.linspace(-1, 1, config.d_model)
    assert not torch.allclose(model(src, tgt[:, :-1])[..., 15], logits[..., 15])


def test_sinusoidal_positions_follow_the_paper():
    model = make_model()
    d = model.config.d_model
    pos, i = 7, 5
    angle = torch.tensor(pos / 10000 ** (2 * i / d), dtype=torch.float64)
    assert model.positions[pos, 2 * i].item() == pytest.approx(torch.sin(angle).item(), abs=1e-6)
    assert model.positions[pos, 2 * i + 1].item() == pytest.approx(torch.cos(angle).item(),
                                                                   abs=1e-6)


def test_initialisation():
    torch.manual_seed(0)
    model = Seq2SeqTransformer(TransformerConfig.tiny(vocab_size=4000))
    assert model.embedding.weight.std().item() == pytest.approx(64 ** -0.5, rel=0.05)
    qkv = model.encoder[0].self_attn.qkv_proj
    bound = (6 / (64 + 64)) ** 0.5  # xavier for each D x D block of the fused projection
    assert qkv.weight.abs().max() <= bound and qkv.weight.abs().max() > 0.9 * bound
    assert (qkv.bias == 0).all()
    linear1 = model.encoder[0].ffn.linear1  # (128, 64): one xavier matrix
    bound = (6 / (64 + 128)) ** 0.5
    assert linear1.weight.abs().max() <= bound and linear1.weight.abs().max() > 0.9 * bound


@NORMS
def test_label_smoothed_loss_matches_cross_entropy(norm_first):
    model = make_model(dtype=torch.float32, norm_first=norm_first, label_smoothing=0.1)
    src, tgt = make_batch(model)
    out = model.loss(src, tgt)
    logits = model(src, tgt[:, :-1])
    flat_logits, flat_target = logits.flatten(0, 1), tgt[:, 1:].flatten()
    expected = F.cross_entropy(flat_logits, flat_target, ignore_index=0, label_smoothing=0.1)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.nll, F.cross_entropy(flat_logits, flat_target, ignore_index=0))
    assert out.num_tokens == int((tgt[:, 1:] != 0).sum())


def test_loss_ignores_padding():
    model = make_model()
    src, tgt = make_batch(model, batch_size=6)
    out = model.loss(src, tgt)
    # More padding columns change nothing.
    wider = model.loss(F.pad(src, (0, 3)), F.pad(tgt, (0, 4)))
    torch.testing.assert_close(wider.loss, out.loss)
    assert wider.num_tokens == out.num_tokens
    # The batch loss is the token-weighted mean of each sequence's loss alone (no padding).
    total = 0.0
    for s, t in zip(src, tgt, strict=True):
        alone = model.loss(s[s != 0][None], t[t != 0][None])
        total = total + alone.loss * alone.num_tokens
    torch.testing.assert_close(out.loss, total / out.num_tokens)


@NORMS
def test_source_padding_does_not_change_real_positions(norm_first):
    model = make_model(norm_first=norm_first)
    src, tgt = make_batch(model, batch_size=6)
    memory, _ = model.encode(src)
    logits = model(src, tgt[:, :-1])
    for b in range(src.shape[0]):
        s, t = src[b][src[b] != 0], tgt[b][tgt[b] != 0]
        alone_memory, _ = model.encode(s[None])
        torch.testing.assert_close(memory[b, :len(s)], alone_memory[0])
        alone_logits = model(s[None], t[None, :-1])
        torch.testing.assert_close(logits[b, :len(t) - 1], alone_logits[0])


@NORMS
def test_decoder_is_causal(norm_first):
    model = make_model(norm_first=norm_first)
    src, tgt = make_batch(model, batch_size=3)
    tgt_in = tgt[:, :-1].clone()
    logits = model(src, tgt_in)
    k = 3
    changed = tgt_in.clone()
    changed[:, k] = torch.where(changed[:, k] == 5, 6, 5)
    changed_logits = model(src, changed)
    torch.testing.assert_close(changed_logits[:, :k], logits[:, :k], rtol=0, atol=1e-12)
    assert not torch.allclose(changed_logits[:, k], logits[:, k])


@NORMS
def test_gradients_reach_every_parameter(norm_first):
    model = make_model(dtype=torch.float32, norm_first=norm_first, dropout=0.1,
                       attention_dropout=0.1, activation_dropout=0.1, label_smoothing=0.1)
    model.train()
    src, tgt = make_batch(model)
    model.loss(src, tgt).loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_dropout_only_in_training_mode():
    model = make_model(dtype=torch.float32, dropout=0.3)
    src, tgt = make_batch(model)
    eval_logits = model(src, tgt[:, :-1])
    torch.testing.assert_close(model(src, tgt[:, :-1]), eval_logits, rtol=0, atol=0)
    model.train()
    assert not torch.allclose(model(src, tgt[:, :-1]), eval_logits)


def test_every_kernel_goes_through_fasttx(count_reference_calls):
    calls = count_reference_calls("attention", "add_layer_norm", "feed_forward")
    model = make_model(dtype=torch.float32)
    src, tgt = make_batch(model)
    with fasttx.use_backend("reference"):
        model(src, tgt[:, :-1])
    # encoder: 2 x (self-attention, 2 norms, FFN); decoder: 2 x (2 attentions, 3 norms, FFN)
    assert calls == {"attention": 2 + 4, "add_layer_norm": 4 + 6, "feed_forward": 2 + 2}


# ----------------------------------------------------------------------------- decoding


@NORMS
def test_cached_decoding_matches_full_decoding(norm_first):
    model = make_model(norm_first=norm_first)
    src, tgt = make_batch(model, batch_size=4)
    memory, src_mask = model.encode(src)
    full = model.decode(tgt, memory, src_mask)
    cache = KVCache(len(model.decoder), capacity=tgt.shape[1])
    steps = [model.decode(tgt[:, :1], memory, src_mask, cache),       # bos
             model.decode(tgt[:, 1:4], memory, src_mask, cache)]      # a 3-token chunk
    for t in range(4, tgt.shape[1]):
        steps.append(model.decode(tgt[:, t:t + 1], memory, src_mask, cache))
    incremental = torch.cat(steps, dim=1)
    real = (tgt != 0)[..., None]  # no padding mask with a cache: compare the real tokens
    torch.testing.assert_close(incremental * real, full * real)
    with pytest.raises(ValueError, match="cache holds"):
        model.decode(tgt[:, :1], memory, src_mask, cache)


@pytest.fixture(scope="module")
def half_trained(one_thread, tmp_path_factory):
    """The tiny model after 100 copy-task steps (~4 s): varied outputs of varied lengths,
    with mistakes, so decoding choices are not trivial. In float64: no near-ties."""
    options = TrainOptions(task="copy", max_steps=100, max_tokens=512, synthetic_size=2000,
                           out=str(tmp_path_factory.mktemp("half-trained")), eval_every=0,
                           log_every=100, progress=False).resolved()
    with one_thread():
        trainer = Trainer(options, echo=lambda *args: None)
        trainer.run(evaluate=False, save=False)
    return trainer.model.double().eval()


def decoding_models(half_trained):
    """(name, model, src): the half-trained model, and random pre-/post-norm models."""
    src = make_batch(half_trained, batch_size=8, seed=5)[0]
    yield "half-trained", half_trained, src
    for norm_first in (False, True):
        model = make_model(seed=1, norm_first=norm_first)
        yield f"random norm_first={norm_first}", model, shuffled(src, 1)


def test_greedy_with_cache_equals_greedy_without(half_trained):
    for name, model, src in decoding_models(half_trained):
        cached = model.generate(src, max_new_tokens=12)
        uncached = model.generate(src, max_new_tokens=12, use_cache=False)
        assert torch.equal(cached, uncached), name
        check_valid_sequences(cached, model.config, src.shape[0])
    src = make_batch(half_trained, batch_size=8, seed=5)[0]
    lengths = (half_trained.generate(src, max_new_tokens=12) != 0).sum(1)
    assert len(set(lengths.tolist())) > 2  # rows finished at different steps


def test_beam_search_with_one_beam_is_greedy(half_trained):
    for name, model, src in decoding_models(half_trained):
        greedy = model.generate(src, max_new_tokens=12)
        beam = model._beam_search(*model.encode(src), 12, 1, 0.6, True)
        assert torch.equal(beam, greedy), name


def check_valid_sequences(tokens, config, batch):
    assert tokens.dim() == 2 and tokens.shape[0] == batch and tokens.dtype == torch.long
    assert (tokens[:, 0] == config.bos_id).all()
    assert ((tokens >= 0) & (tokens < config.vocab_size)).all()
    for row in tokens.tolist():
        body = row[1:]
        if config.eos_id in body:
            end = body.index(config.eos_id)
            assert all(t == config.pad_id for t in body[end + 1:]), row
            body = body[:end]
        assert config.pad_id not in body and config.bos_id not in body, row
    assert (tokens[:, -1] != config.pad_id).any()  # no all-padding trailing column


@pytest.mark.parametrize("num_beams", [2, 4])
def test_beam_search_returns_valid_sequences(half_trained, num_beams):
    for name, model, src in decoding_models(half_trained):
        tokens = model.generate(src, max_new_tokens=12, num_beams=num_beams)
        check_valid_sequences(tokens, model.config, src.shape[0])
        assert tokens.shape[1] <= 13, name
        uncached = model.generate(src, max_new_tokens=12, num_beams=num_beams, use_cache=False)
        assert torch.equal(tokens, uncached), name


def test_beam_search_finds_at_least_greedys_score(half_trained):
    model = half_trained
    src = make_batch(model, batch_size=16, seed=7)[0]
    memory, src_mask = model.encode(src)

    def score(tokens):  # the GNMT-normalised log-probability of each sequence
        log_probs = model.decode(tokens[:, :-1], memory, src_mask).log_softmax(-1)
        token_log_probs = log_probs.gather(2, tokens[:, 1:, None])[..., 0]
        real = tokens[:, 1:] != 0
        length = real.sum(1)
        return (token_log_probs * real).sum(1) / ((5 + length) / 6) ** 0.6

    greedy = model.generate(src, max_new_tokens=12)
    beam = model.generate(src, max_new_tokens=12, num_beams=6)
    finished = (greedy == 2).any(1) & (beam == 2).any(1)
    assert finished.sum() >= 8
    assert (score(beam)[finished] >= score(greedy)[finished] - 1e-9).all()
    assert (score(beam)[finished] > score(greedy)[finished] + 1e-6).any()


def test_generate_restores_training_mode():
    model = make_model(dtype=torch.float32, dropout=0.5)
    src = make_batch(model)[0]
    model.train()
    first = model.generate(src, max_new_tokens=5)
    assert model.training
    assert torch.equal(model.generate(src, max_new_tokens=5), first)  # no dropout inside
    model.eval()
    model.generate(src, max_new_tokens=5)
    assert not model.training


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, match", [
    (lambda m, s, t: m(s.float(), t), "src must hold token ids"),
    (lambda m, s, t: m(s[0], t), r"src must have shape \(B, L\)"),
    (lambda m, s, t: m(s, t[:, :0]), r"tgt_in must have shape \(B, L\)"),
    (lambda m, s, t: m(s, t[:2]), "src and tgt_in must have the same batch size"),
    (lambda m, s, t: m(s.masked_fill(s == 3, 16), t), "src holds token id 16"),
    (lambda m, s, t: m(s, t.masked_fill(t == 1, -1)), "tgt_in holds token id -1"),
    (lambda m, s, t: m(torch.ones(1, 65, dtype=torch.long), t[:1]), "src reaches .* max_len"),
    (lambda m, s, t: m.loss(s, t[:, :1]), "tgt must hold at least bos"),
    (lambda m, s, t: m.loss(s, t[:1]), "src and tgt must have the same batch size"),
    (lambda m, s, t: m.encode([[3, 4]]), "src must be a torch.Tensor"),
    (lambda m, s, t: m.decode(t, torch.zeros(2, 3, 64), None), "memory must have shape"),
    (lambda m, s, t: m.generate(s, num_beams=0), "num_beams"),
    (lambda m, s, t: m.generate(s, max_new_tokens=64), "max_new_tokens"),
    (lambda m, s, t: m.generate(s.long()[:, :, None]), r"src must have shape \(B, L\)"),
])
def test_bad_input_names_the_argument(call, match):
    model = make_model(dtype=torch.float32)
    src, tgt = make_batch(model)
    with pytest.raises((ValueError, TypeError), match=match):
        call(model, src, tgt)


def test_constructor_wants_a_config():
    with pytest.raises(TypeError, match="TransformerConfig"):
        Seq2SeqTransformer({"vocab_size": 16})


@pytest.mark.parametrize("preset, millions", [("base", 65), ("big", 213)])
def test_presets_have_the_papers_parameter_counts(preset, millions):
    """Table 3 of the paper: 65M (base) and 213M (big) parameters with a 37000-token vocab."""
    with torch.device("meta"):
        model = Seq2SeqTransformer(TransformerConfig.preset(preset))
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - millions) / millions < 0.05


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_other_backends_match_the_reference(backend):
    """The whole model under another backend: same loss and gradients (fp32)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    available = fasttx.available_backends()
    if not available[backend]:
        pytest.skip(f"{backend} unavailable: {available.reasons[backend]}")
    if backend == "cuda" and device == "cpu":
        pytest.skip("the cuda backend needs CUDA tensors")
    missing = [op for op in ("attention", "add_layer_norm", "feed_forward")
               if backends.unsupported_reason(backend, op, torch.device(device)) is not None]
    if missing:  # each op's own tests cover the kernels that exist
        pytest.skip(f"the {backend} backend has no kernels yet for {', '.join(missing)}")
    model = make_model(dtype=torch.float32, norm_first=True).to(device)
    src, tgt = (t.to(device) for t in make_batch(model, batch_size=2))
    results = []
    for name in ("reference", backend):
        model.zero_grad()
        with fasttx.use_backend(name):
            loss = model.loss(src, tgt).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (ref_loss, ref_grads), (loss, grads) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-5)
    for ref_grad, grad in zip(ref_grads, grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-3, atol=1e-4)
