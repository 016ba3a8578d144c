"""fasttx inside other libraries' models.

``fasttx.integrations.transformers.register()`` makes ``attn_implementation="fasttx"`` run
Hugging Face transformers' encoder-decoder models (BART, mBART, Marian, Pegasus, M2M100,
Whisper) through fasttx's attention. Each integration imports its library only when used.
"""
