"""tests/triton/gpu_launches.py, the count of the GPU suite's kernel compiles: every GPU test
of tests/triton has a replay, and a replay records the launches with an H200's tiles."""

import pytest

from fasttx.testing import requires_triton_interpreter

pytestmark = requires_triton_interpreter  # the replays record interpreted kernels
gpu_launches = pytest.importorskip("tests.triton.gpu_launches")


def test_every_gpu_test_has_a_replay():
    items = gpu_launches.gpu_test_items(["tests/triton"])
    keys = {gpu_launches.test_key(item) for item in items}
    assert len(items) > 50 and len(keys) >= 9
    assert keys == set(gpu_launches.REPLAYS), keys ^ set(gpu_launches.REPLAYS)


def test_a_replay_records_every_kernel_with_the_hopper_tiles():
    replay = gpu_launches.REPLAYS[
        "tests.triton.test_varlen_attention::test_gpu_matches_reference_within_budget"]
    import torch
    with gpu_launches.recording() as launches:
        replay(is_causal=True, dtype=torch.bfloat16)
    kernels = [name for name, _, _ in launches]
    assert kernels == ["attention_forward_kernel", "attention_backward_preprocess_kernel",
                       "attention_backward_dq_kernel", "attention_backward_dkdv_kernel"]
    from fasttx.triton.attention import _CONFIGS, spill_free
    forward = launches[0][2]
    # the first Hopper config the spill pruning keeps for this launch
    expected = next(config for config in _CONFIGS["forward"]["hopper"]
                    if spill_free("forward", config[0], config[1], forward))
    assert (forward["BLOCK_M"], forward["BLOCK_N"], forward["num_warps"],
            forward["num_stages"]) == expected
    keys = {gpu_launches.specialisation(*launch) for launch in launches}
    assert len(keys) == 4
    with gpu_launches.recording() as again:
        replay(is_causal=True, dtype=torch.bfloat16)
    assert {gpu_launches.specialisation(*launch) for launch in again} == keys
