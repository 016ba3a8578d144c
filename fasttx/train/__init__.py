"""Training the bundled encoder-decoder Transformer: the ``fasttx-train`` command.

    from fasttx.train import Trainer, TrainOptions
    summary = Trainer(TrainOptions(task="reverse", max_steps=800).resolved()).run()
    print(summary.final_loss, summary.test.exact_match)

Modules, in the order a run uses them: ``options`` (every flag and its default),
``tasks`` (built-in synthetic tasks), ``tokenizer`` (word and subword tokenizers),
``data`` (reading parallel text, token-count batching, padding or packing), ``corpus``
(the splits of a run), ``distributed`` (torchrun, DDP, FSDP), ``trainer`` (the loop),
``checkpoint`` (atomic, resumable checkpoints), ``evaluate`` (decoding, BLEU, chrF),
``plots``, ``compare`` (``--compare-backends``) and ``cli``; then ``translate`` (the
``fasttx-translate`` command: a checkpoint's model on new text).

Needs the ``train`` extra: ``pip install 'fasttx[train]'`` (tokenizers, sacrebleu, tqdm,
matplotlib).
"""

from fasttx.train.options import TrainOptions
from fasttx.train.trainer import NonFiniteLossError, Trainer, TrainSummary, noam_lr

__all__ = ["NonFiniteLossError", "TrainOptions", "TrainSummary", "Trainer", "noam_lr"]
