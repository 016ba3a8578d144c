"""The bundled encoder-decoder Transformer ("Attention Is All You Need") and its demo task.

    from fasttx.models import Seq2SeqTransformer, TransformerConfig
    model = Seq2SeqTransformer(TransformerConfig.base(vocab_size=32000))

Modules: ``config`` (hyperparameters and presets), ``seq2seq`` (the model, its loss and
generation), ``layers`` (attention, encoder and decoder layers), ``cache`` (the key/value
cache of incremental decoding), ``packing`` (padding-free training batches), and ``tasks``
(the copy task and its metrics). The training loop is :mod:`fasttx.train`.
"""

from fasttx.models.cache import KVCache
from fasttx.models.config import PRESETS, TransformerConfig
from fasttx.models.packing import PackedBatch
from fasttx.models.seq2seq import Seq2SeqLoss, Seq2SeqTransformer
from fasttx.models.tasks import Accuracy, CopyTask, sequence_accuracy

__all__ = [
    "PRESETS",
    "Accuracy",
    "CopyTask",
    "KVCache",
    "PackedBatch",
    "Seq2SeqLoss",
    "Seq2SeqTransformer",
    "TransformerConfig",
    "sequence_accuracy",
]
