"""torch.compile(fullgraph=True) traces through every public function and module.

Each functional call (the fused ops and ``attention_probabilities``) is compiled with
aot_eager (dynamo + AOTAutograd over the fake implementations) and with inductor, on
contiguous and on strided inputs (the head-split views a model passes), forward and
backward, and compared with eager.

Each public module (every class in ``fasttx.nn.__all__`` and the bundled
``fasttx.models.Seq2SeqTransformer``, its forward and its loss) is compiled with aot_eager
on tiny sizes with its masks (key padding, causal), on the reference backend (the default
on CPU); outputs and parameter gradients must equal eager's, and the compiled graph must
hold the fasttx ops the module is built on. With fullgraph=True any graph break fails the
test. A test checks that every public module class has a case.
"""

import dataclasses

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend

import fasttx
from fasttx.models import Seq2SeqTransformer, TransformerConfig
from fasttx.ops.attention import attention_probabilities
from fasttx.testing import attention_inputs, key_padding_mask, random_tensor


def heads_view(x, heads):
    """(B, L, H*D) -> (B, H, L, D) as a strided view, as attention modules produce."""
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def attention_call(strided):
    if strided:
        q, k, v = (random_tensor(2, 5, 16, seed=i, requires_grad=True) for i in range(3))
        mask = torch.randn(2, 1, 5, 5).transpose(-1, -2).requires_grad_(True)
        return (lambda q, k, v, m: fasttx.scaled_dot_product_attention(
            heads_view(q, 2), heads_view(k, 2), heads_view(v, 2), attn_mask=m,
            is_causal=True)), (q, k, v, mask)
    q, k, v = attention_inputs(2, 4, 5, 7, 8, kv_heads=2, requires_grad=True, seed=1)
    mask = key_padding_mask([7, 3], 7)
    return (lambda q, k, v: fasttx.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=True, enable_gqa=True)), (q, k, v)


def attention_dropout_call(strided):
    q, k, v = attention_inputs(1, 2, 6, 6, 8, requires_grad=True, seed=2)
    if strided:
        q = q.detach().transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_(True)
    return (lambda q, k, v: fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.2)), (q, k, v)


def varlen_call(strided):
    q, k, v = (random_tensor(9, 2, 8, seed=i, requires_grad=True) for i in range(3))
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    if strided:  # q and k: views of one packed (T, 2, H, E) projection, row stride 2 * H * E
        qk = random_tensor(9, 4, 8, seed=3, requires_grad=True)
        return (lambda qk, v: fasttx.varlen_attention(*qk.unflatten(1, (2, 2)).unbind(1), v, cu,
                                                      cu, 5, 5)), (qk, v)
    return (lambda q, k, v: fasttx.varlen_attention(q, k, v, cu, cu, 5, 5, is_causal=True)), \
        (q, k, v)


def add_layer_norm_call(strided):
    x, r = (random_tensor(3, 5, 16, seed=i, requires_grad=True) for i in range(2))
    w, b = torch.ones(16, requires_grad=True), torch.zeros(16, requires_grad=True)
    if strided:
        x, r = (random_tensor(16, 7, seed=i, requires_grad=True) for i in range(2))
        return (lambda x, r, w, b: fasttx.add_layer_norm(x.t(), r.t(), w, b, dropout_p=0.1,
                                                         return_residual=True)), (x, r, w, b)
    return (lambda x, r, w, b: fasttx.add_layer_norm(x, r, w, b, dropout_p=0.1,
                                                     return_residual=True)), (x, r, w, b)


def feed_forward_call(strided):
    x = random_tensor(3, 5, 16, seed=1, requires_grad=True)
    w1, w2 = random_tensor(24, 16, seed=2, requires_grad=True), random_tensor(16, 24, seed=3,
                                                                              requires_grad=True)
    b1, b2 = torch.zeros(24, requires_grad=True), torch.zeros(16, requires_grad=True)
    if strided:
        x = random_tensor(16, 6, seed=1, requires_grad=True)
        w1t = random_tensor(16, 24, seed=2, requires_grad=True)
        return (lambda x, w1t, b1, w2, b2: fasttx.feed_forward(
            x.t(), w1t.t(), b1, w2, b2, activation="gelu_tanh", dropout_p=0.3)), \
            (x, w1t, b1, w2, b2)
    return (lambda *args: fasttx.feed_forward(*args, activation="gelu")), (x, w1, b1, w2, b2)


def attention_probabilities_call(strided):
    if strided:
        q, k = (random_tensor(2, 5, 12, seed=i, requires_grad=True) for i in (5, 6))
        mask = torch.randn(2, 1, 5, 5).transpose(-1, -2).requires_grad_(True)
        return (lambda q, k, m: attention_probabilities(heads_view(q, 2), heads_view(k, 2), m,
                                                        is_causal=True)), (q, k, mask)
    q, k, _ = attention_inputs(2, 4, 5, 7, 6, kv_heads=2, requires_grad=True, seed=3)
    mask = key_padding_mask([7, 0], 7)  # the second sequence's rows attend to nothing
    return (lambda q, k: attention_probabilities(q, k, mask, is_causal=True, scale=0.3)), (q, k)


CALLS = [attention_call, attention_dropout_call, varlen_call, add_layer_norm_call,
         feed_forward_call, attention_probabilities_call]


def run_with_grads(fn, inputs, seed=0):
    """Outputs and input gradients of sum(outputs) (dropout seeded by ``seed``)."""
    inputs = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    torch.manual_seed(seed)
    outputs = fn(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    differentiable = [t for t in inputs if t.requires_grad]
    grads = torch.autograd.grad(sum((o * o).sum() for o in outputs), differentiable)
    return [o.detach() for o in outputs], grads


# Calls whose dropout mask differs under inductor, which lowers the seed's randint to its
# own generator (still seeded by torch.manual_seed, but not eager's stream).
DROPOUT_CALLS = {attention_dropout_call, add_layer_norm_call}


@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("make_call", CALLS, ids=lambda f: f.__name__)
def test_fullgraph_compile_matches_eager(make_call, compiler, strided):
    torch._dynamo.reset()
    fn, inputs = make_call(strided)
    eager_out, eager_grads = run_with_grads(fn, inputs)
    compiled = torch.compile(fn, fullgraph=True, backend=compiler)
    compiled_out, compiled_grads = run_with_grads(compiled, inputs)
    uses_dropout = make_call in DROPOUT_CALLS or (make_call is feed_forward_call and strided)
    if compiler == "inductor" and uses_dropout:
        assert all(torch.isfinite(g).all() for g in compiled_grads)
        return
    for got, want in zip(compiled_out + list(compiled_grads), eager_out + list(eager_grads),
                         strict=True):
        torch.testing.assert_close(got, want)


def test_dynamic_shapes_compile_once_per_feature_size():
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda x, w: fasttx.add_layer_norm(x, None, w, None), fullgraph=True, dynamic=True,
        backend="aot_eager")
    for rows, dim in [(3, 8), (5, 8), (4, 12)]:
        x, w = random_tensor(rows, dim, seed=rows), torch.ones(dim)
        torch.testing.assert_close(compiled(x, w), fasttx.add_layer_norm(x, None, w, None))
    q, k, v = attention_inputs(1, 2, 5, 6, 8, seed=3)
    attention = torch.compile(lambda q, k, v: fasttx.scaled_dot_product_attention(q, k, v),
                              fullgraph=True, dynamic=True, backend="aot_eager")
    torch.testing.assert_close(attention(q, k, v), fasttx.scaled_dot_product_attention(q, k, v))


def test_compiled_transformer_layer_trains_like_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = fasttx.nn.TransformerEncoderLayer(16, 2, dim_feedforward=24, dropout=0.0,
                                              batch_first=True)
    src = random_tensor(3, 7, 16, seed=4)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, 4:] = True
    eager = layer(src, src_key_padding_mask=padding)
    eager_grads = torch.autograd.grad(eager.square().sum(), list(layer.parameters()))
    compiled = torch.compile(layer, fullgraph=True)
    out = compiled(src, src_key_padding_mask=padding)
    grads = torch.autograd.grad(out.square().sum(), list(layer.parameters()))
    torch.testing.assert_close(out, eager)
    for got, want in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want)


# ---- modules: every public module class, and the bundled model's forward and loss ----

D, HEADS, FF = 12, 2, 18  # head dim 6
BATCH, SRC, TGT = 3, 5, 4


def sequence(length, seed, batch_first=True):
    shape = (BATCH, length, D) if batch_first else (length, BATCH, D)
    return random_tensor(*shape, seed=seed)


def padding(length):
    """(BATCH, length) bool in torch's convention (True = ignore): sequences 1, 2 padded."""
    ignore = torch.zeros(BATCH, length, dtype=torch.bool)
    ignore[1, length - 2:] = True
    ignore[2, length - 1:] = True
    return ignore


def causal(length):
    return fasttx.nn.Transformer.generate_square_subsequent_mask(length)


def layer(cls, **kwargs):
    return cls(D, HEADS, dim_feedforward=FF, dropout=0.1, batch_first=True, **kwargs)


@dataclasses.dataclass
class ModuleCase:
    """``target`` (the module, or one of its methods) is compiled; each of ``calls`` runs
    it (or the eager one) on its inputs; ``ops``: the fasttx ops its graph must hold."""

    module: torch.nn.Module
    calls: list
    ops: set
    target: object = None


ALL_OPS = {"attention_forward", "add_layer_norm_forward", "feed_forward_forward"}


def multihead_attention_weights():
    """Cross-attention, sequence-first, key padding, per-head weights, attention dropout."""
    module = fasttx.nn.MultiheadAttention(D, HEADS, dropout=0.1)
    query, memory = sequence(TGT, 1, batch_first=False), sequence(SRC, 2, batch_first=False)
    return ModuleCase(module, [lambda f: f(query, memory, memory, key_padding_mask=padding(SRC),
                                           need_weights=True, average_attn_weights=False)],
                      {"attention_forward"})


def multihead_attention_no_weights():
    """Self-attention, batch-first, key padding and a causal bool mask, no weights."""
    module = fasttx.nn.MultiheadAttention(D, HEADS, batch_first=True)
    x = sequence(TGT, 3)
    future = torch.ones(TGT, TGT, dtype=torch.bool).triu(1)
    return ModuleCase(module, [lambda f: f(x, x, x, key_padding_mask=padding(TGT),
                                           need_weights=False, attn_mask=future)],
                      {"attention_forward"})


def encoder_layer():
    """Pre-norm, GELU, key padding."""
    module = layer(fasttx.nn.TransformerEncoderLayer, norm_first=True, activation="gelu")
    src = sequence(SRC, 4)
    return ModuleCase(module, [lambda f: f(src, src_key_padding_mask=padding(SRC))], ALL_OPS)


def decoder_layer():
    """Post-norm, causal self-attention, target and memory key padding."""
    module = layer(fasttx.nn.TransformerDecoderLayer)
    tgt, memory = sequence(TGT, 5), sequence(SRC, 6)
    return ModuleCase(module, [lambda f: f(tgt, memory, tgt_key_padding_mask=padding(TGT),
                                           memory_key_padding_mask=padding(SRC),
                                           tgt_is_causal=True)], ALL_OPS)


def encoder():
    """Two layers and a final AddLayerNorm; a causal float mask without the is_causal hint."""
    module = fasttx.nn.TransformerEncoder(layer(fasttx.nn.TransformerEncoderLayer), 2,
                                          norm=fasttx.nn.AddLayerNorm(D))
    src = sequence(SRC, 7)
    return ModuleCase(module, [lambda f: f(src, mask=causal(SRC),
                                           src_key_padding_mask=padding(SRC))], ALL_OPS)


def decoder():
    """Two pre-norm layers and a final nn.LayerNorm; a causal tgt_mask, memory padding."""
    module = fasttx.nn.TransformerDecoder(
        layer(fasttx.nn.TransformerDecoderLayer, norm_first=True), 2, norm=torch.nn.LayerNorm(D))
    tgt, memory = sequence(TGT, 8), sequence(SRC, 9)
    return ModuleCase(module, [lambda f: f(tgt, memory, tgt_mask=causal(TGT),
                                           memory_key_padding_mask=padding(SRC))], ALL_OPS)


def transformer():
    """Source and target key padding and a causal tgt_mask, as a training step passes them."""
    module = fasttx.nn.Transformer(D, HEADS, 1, 1, FF, dropout=0.1, batch_first=True)
    src, tgt = sequence(SRC, 10), sequence(TGT, 11)
    return ModuleCase(module, [lambda f: f(src, tgt, tgt_mask=causal(TGT),
                                           src_key_padding_mask=padding(SRC),
                                           tgt_key_padding_mask=padding(TGT),
                                           memory_key_padding_mask=padding(SRC))], ALL_OPS)


def add_layer_norm_module():
    module = fasttx.nn.AddLayerNorm(D, dropout=0.1)
    x, residual = sequence(SRC, 12), sequence(SRC, 13)
    return ModuleCase(module, [lambda f: f(x, residual, return_residual=True)],
                      {"add_layer_norm_forward"})


def feed_forward_module():
    module = fasttx.nn.FeedForward(D, FF, dropout=0.1, activation="gelu_tanh")
    x = sequence(SRC, 14)
    return ModuleCase(module, [lambda f: f(x)], {"feed_forward_forward"})


def seq2seq_model():
    config = TransformerConfig.tiny(d_model=D, num_heads=HEADS, d_ff=FF, num_encoder_layers=1,
                                    num_decoder_layers=1, max_len=16, dropout=0.1,
                                    label_smoothing=0.1)
    return Seq2SeqTransformer(config)


def token_batch(seed, tgt_lengths):
    """src (BATCH, 6) and tgt (BATCH, 7) = [bos, tokens..., pad...] with ``tgt_lengths``."""
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(3, 16, (BATCH, 6), generator=generator)
    src[1, 4:] = 0
    tgt = torch.randint(3, 16, (BATCH, 7), generator=generator)
    tgt[:, 0] = 1
    for row, length in enumerate(tgt_lengths):
        tgt[row, length:] = 0
    return src, tgt


def seq2seq_forward():
    src, tgt = token_batch(15, [7, 5, 3])
    return ModuleCase(seq2seq_model(), [lambda f: f(src, tgt[:, :-1])], ALL_OPS)


def seq2seq_loss():
    """Two batches with different numbers of target tokens through one compiled loss."""
    model = seq2seq_model()
    batches = [token_batch(16, [7, 5, 3]), token_batch(17, [2, 7, 6])]
    return ModuleCase(model, [lambda f, batch=batch: f(*batch) for batch in batches], ALL_OPS,
                      target=model.loss)


MODULE_CASES = [multihead_attention_weights, multihead_attention_no_weights, encoder_layer,
                decoder_layer, encoder, decoder, transformer, add_layer_norm_module,
                feed_forward_module, seq2seq_forward, seq2seq_loss]


def outputs_and_grads(call, fn, parameters):
    """Outputs of ``call(fn)`` (a tuple, a tensor or a Seq2SeqLoss, as a list) and the
    parameter gradients of a random projection of its differentiable outputs."""
    torch.manual_seed(0)  # the same dropout masks in eager and compiled runs
    out = call(fn)
    if dataclasses.is_dataclass(out):
        out = [getattr(out, field.name) for field in dataclasses.fields(out)]
    out = [out] if isinstance(out, torch.Tensor) else list(out)
    differentiable = [t for t in out if isinstance(t, torch.Tensor) and t.requires_grad]
    assert differentiable
    loss = sum((t * random_tensor(*t.shape, seed=99)).sum() for t in differentiable)
    grads = torch.autograd.grad(loss, parameters, allow_unused=True)
    return [t.detach() if isinstance(t, torch.Tensor) else t for t in out], grads


def fasttx_ops(graphs):
    """Names of the fasttx ops called in the dynamo graphs."""
    return {node.target.name().split("::")[1].split(".")[0] for graph in graphs
            for node in graph.graph.nodes if isinstance(node.target, torch._ops.OpOverload)
            and node.target.namespace == "fasttx"}


@pytest.mark.parametrize("make_case", MODULE_CASES, ids=lambda f: f.__name__)
def test_fullgraph_compiled_module_matches_eager(make_case):
    torch._dynamo.reset()
    torch.manual_seed(1)
    case = make_case()
    module = case.module.train()  # dropout on: masks are drawn inside the graph
    target = module if case.target is None else case.target
    parameters = list(module.parameters())
    graphs = []

    def recording_aot_eager(graph, example_inputs):
        graphs.append(graph)
        return lookup_backend("aot_eager")(graph, example_inputs)

    compiled = torch.compile(target, fullgraph=True, backend=recording_aot_eager)
    for call in case.calls:
        want_out, want_grads = outputs_and_grads(call, target, parameters)
        got_out, got_grads = outputs_and_grads(call, compiled, parameters)
        torch.testing.assert_close(got_out, want_out)
        for (name, _), got, want in zip(module.named_parameters(), got_grads, want_grads,
                                        strict=True):
            torch.testing.assert_close(got, want, msg=lambda m, name=name: f"{name}: {m}")
    assert case.ops <= fasttx_ops(graphs), "the fasttx ops are not in the compiled graph"


def test_every_public_module_has_a_compile_case():
    public = {name for name in fasttx.nn.__all__
              if isinstance(getattr(fasttx.nn, name), type)}
    public |= {name for name in fasttx.models.__all__
               if isinstance(getattr(fasttx.models, name), type)
               and issubclass(getattr(fasttx.models, name), torch.nn.Module)}
    covered = {type(make_case().module).__name__ for make_case in MODULE_CASES}
    assert public <= covered, f"no compile case for {sorted(public - covered)}"
