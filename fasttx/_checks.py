"""Input validation shared by the functional API.

Every check raises ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong shape or
value) with a message that names the argument and says what was expected, so that bad
input fails at the call instead of deep inside a kernel.
"""

from __future__ import annotations

import numbers

import torch

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(name: str, value, *, min_dim: int = 1, dim: int | None = None,
           dtypes: tuple[torch.dtype, ...] = FLOATING) -> torch.Tensor:
    """Checks that ``value`` is a tensor of an allowed dtype and rank."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_nested or value.layout != torch.strided:
        kind = "a nested tensor" if value.is_nested else f"layout {value.layout}"
        raise TypeError(f"{name} must be a dense (strided) tensor, got {kind}: pad the "
                        f"sequences (with a mask), or pack them for fasttx.varlen_attention")
    if value.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({allowed}), got {value.dtype}")
    if dim is not None and value.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {tuple(value.shape)}")
    if value.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimensions, got shape {tuple(value.shape)}")
    return value


def optional_tensor(name: str, value, **kwargs) -> torch.Tensor | None:
    return None if value is None else tensor(name, value, **kwargs)


def shape(name: str, value: torch.Tensor, expected: tuple[int, ...], meaning: str) -> None:
    """Checks ``value.shape == expected``; ``meaning`` spells the expected shape in symbols."""
    if tuple(value.shape) != tuple(expected):
        raise ValueError(
            f"{name} must have shape {meaning} = {tuple(expected)}, got {tuple(value.shape)}")


def nonempty(name: str, value: torch.Tensor, dims: range | tuple[int, ...]) -> None:
    for d in dims:
        if value.shape[d] == 0:
            raise ValueError(f"{name} must not be empty in dimension {d}, got shape "
                             f"{tuple(value.shape)}")


def _same(attribute: str, error: type[Exception], tensors: dict) -> object:
    """Checks that the given (non-None) tensors agree on ``attribute``; returns it."""
    named = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = named[0]
    expected = getattr(first, attribute)
    for n, t in named[1:]:
        if getattr(t, attribute) != expected:
            raise error(f"{n} must have the {attribute} of {first_name} ({expected}), "
                        f"got {getattr(t, attribute)}")
    return expected


def same_dtype(**tensors: torch.Tensor | None) -> torch.dtype:
    return _same("dtype", TypeError, tensors)


def same_device(**tensors: torch.Tensor | None) -> torch.device:
    return _same("device", ValueError, tensors)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def probability(name: str, value, *, allow_one: bool = False) -> float:
    """A dropout probability in [0, 1), or [0, 1] with ``allow_one``."""
    interval = "[0, 1]" if allow_one else "[0, 1)"
    if not _is_number(value):
        raise TypeError(f"{name} must be a float in {interval}, got {type(value).__name__}")
    if not (0.0 <= value <= 1.0 if allow_one else 0.0 <= value < 1.0):
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return float(value)


def positive(name: str, value) -> float:
    if not _is_number(value):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def optional_number(name: str, value) -> float | None:
    if value is not None and not _is_number(value):
        raise TypeError(f"{name} must be a number or None, got {type(value).__name__}")
    return None if value is None else float(value)


def flag(name: str, value) -> bool:
    """A bool argument: truthy strings or tensors are refused rather than guessed at."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def choice(name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def autocast(device: torch.device, *tensors: torch.Tensor | None):
    """The tensors as ``torch.autocast`` would hand them to a matmul on ``device``.

    Under autocast, fp32/fp16/bf16 tensors are cast to the autocast dtype; fp64 tensors
    (and everything outside autocast) are returned unchanged, as torch does; so are the
    tensors of a device type autocast does not know (meta tensors, as torch's ops keep them).
    """
    if (not torch.amp.is_autocast_available(device.type)
            or not torch.is_autocast_enabled(device.type)):
        return tensors
    target = torch.get_autocast_dtype(device.type)
    castable = (torch.float32, torch.float16, torch.bfloat16)
    return tuple(t.to(target) if t is not None and t.dtype in castable else t for t in tensors)
