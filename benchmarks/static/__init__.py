"""The static cost report: every kernel compiled for sm_90 and counted, no GPU needed.

    python -m benchmarks static            # benchmarks/README.md, "Static cost report"

``cases`` (the launches), ``launches`` (recording them), ``compile`` (the compile worker),
``sass`` (reading machine code), ``cuda`` (the csrc/ kernels), ``report`` (rows, Markdown,
comparison, the command line), ``budgets`` (what CI holds the kernels to).
"""
