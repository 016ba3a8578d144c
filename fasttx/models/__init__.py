"""The bundled encoder-decoder Transformer ("Attention Is All You Need") and its demo task.

    from fasttx.models import Seq2SeqTransformer, TransformerConfig
    model = Seq2SeqTransformer(TransformerConfig.base(vocab_size=32000))

Modules: ``config`` (hyperparameters and presets), ``seq2seq`` (the model, its loss and
generation), ``layers`` (attention, encoder and decoder layers), ``cache`` (the key/value
cache of incremental decoding), ``packing`` (padding-free training batches), ``tasks``
(the copy task and its metrics) and ``train`` (the training loop).
"""

from fasttx.models.cache import KVCache
from fasttx.models.config import PRESETS, TransformerConfig
from fasttx.models.packing import PackedBatch
from fasttx.models.seq2seq import Seq2SeqLoss, Seq2SeqTransformer
from fasttx.models.tasks import Accuracy, CopyTask, evaluate_copy_task, sequence_accuracy
from fasttx.models.train import TrainResult, noam_lr, train_copy_task

__all__ = [
    "PRESETS",
    "Accuracy",
    "CopyTask",
    "KVCache",
    "PackedBatch",
    "Seq2SeqLoss",
    "Seq2SeqTransformer",
    "TrainResult",
    "TransformerConfig",
    "evaluate_copy_task",
    "noam_lr",
    "sequence_accuracy",
    "train_copy_task",
]
