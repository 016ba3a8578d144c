"""The reference backend: plain, readable PyTorch; the oracle of every test.

One module per op with ``<op>_forward`` / ``<op>_backward`` taking the same arguments as
the Triton and CUDA backends. Matrix products run in the inputs' dtype, as plain PyTorch
would; softmax and normalisation statistics are computed in fp32 (fp64 for fp64 inputs).
The backward formulas are written out (not left to autograd) so that they document what
a fused kernel must compute; the tests check them against autograd in float64.
"""
