"""The CUDA kernels' Philox (``csrc/common/philox.cuh``) is bit-identical to
``fasttx.random``, so the CUDA backend drops exactly the elements the reference and the
Triton kernels drop.

The header is host-and-device code: compiled here by the host C++ compiler into a small
program (no GPU or nvcc needed) whose uniforms are compared bit for bit.
"""

import pathlib
import shutil
import subprocess

import pytest
import torch

from fasttx import random as philox

CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"
DRIVER = r"""
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include "common/philox.cuh"

// argv: seed, then counters; prints each uniform's fp32 bits in hex, one per line.
int main(int argc, char** argv) {
  const uint64_t seed = std::strtoull(argv[1], nullptr, 10);
  for (int i = 2; i < argc; ++i) {
    const float u = fasttx::philox_uniform(seed, std::strtoull(argv[i], nullptr, 10));
    uint32_t bits;
    std::memcpy(&bits, &u, sizeof bits);
    std::printf("%08" PRIx32 "\n", bits);
  }
  return 0;
}
"""


@pytest.fixture(scope="module")
def philox_program(tmp_path_factory):
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no host C++ compiler")
    folder = tmp_path_factory.mktemp("philox")
    (folder / "driver.cpp").write_text(DRIVER)
    program = folder / "driver"
    subprocess.run([compiler, "-std=c++17", "-O2", f"-I{CSRC}", str(folder / "driver.cpp"),
                    "-o", str(program)], check=True)
    return program


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 - 1, 2**32, 2**62 - 7])
def test_cuda_philox_matches_fasttx_random_bit_for_bit(philox_program, seed):
    generator = torch.Generator().manual_seed(seed % 1000)
    counters = torch.cat([
        torch.arange(300, dtype=torch.int64),                          # the first elements
        torch.randint(0, 2**31, (300,), generator=generator),          # 32-bit counters
        torch.randint(2**31, 2**40, (300,), generator=generator),      # high word in use
    ])
    printed = subprocess.run([str(philox_program), str(seed), *map(str, counters.tolist())],
                             check=True, capture_output=True, text=True).stdout.split()
    cuda_bits = torch.tensor([int(word, 16) for word in printed], dtype=torch.int64)
    expected = philox.uniform(torch.tensor([seed]), counters).view(torch.int32).to(torch.int64)
    expected &= 0xFFFFFFFF
    mismatches = (cuda_bits != expected).nonzero().flatten()
    assert mismatches.numel() == 0, (
        f"{mismatches.numel()} of {counters.numel()} uniforms differ, first at counter "
        f"{counters[mismatches[0]].item()}")
    # and the stream is a stream: not constant, roughly uniform
    uniforms = cuda_bits.to(torch.int32).view(torch.float32)
    assert 0.4 < uniforms.mean().item() < 0.6 and uniforms.min() >= 0 and uniforms.max() < 1
