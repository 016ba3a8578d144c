"""fasttx's ops: the custom-op layer (``torch.ops.fasttx.*``) and the functional API."""

from fasttx.ops.add_layer_norm import add_layer_norm
from fasttx.ops.attention import scaled_dot_product_attention
from fasttx.ops.feed_forward import feed_forward
from fasttx.ops.varlen_attention import varlen_attention

__all__ = ["add_layer_norm", "feed_forward", "scaled_dot_product_attention", "varlen_attention"]
