"""Reads SASS, the GPU's machine code, as ``cuobjdump -sass`` prints it: the instructions,
the loops (backward branches), and the instruction mix of a loop.

Pure text processing, no GPU and no Triton: the static report's compile worker runs it
under whichever Triton version compiled the kernel, and its tests feed it known listings.
"""

from __future__ import annotations

import collections
import dataclasses
import re

# `        /*0a30*/      @!P0 BRA 0x4bf0 ;      /* 0x0000002c006c9947 */`
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH_TARGET = re.compile(r"\bBRA(?:\.\S+)?\s+(?:!?U?P\w+\s*,\s*)?(?:`\()?0x([0-9a-f]+)")

#: The columns of the report's instruction mix: a group and the opcodes (the mnemonic
#: before its first dot) it counts. Opcodes in no group are still in ``Loop.opcodes``.
MIX_GROUPS = {
    "tensor": ("HGMMA", "HMMA", "IMMA", "QGMMA", "IGMMA"),  # warpgroup and warp MMA
    "fp32": ("FADD", "FMUL", "FFMA", "FMNMX", "FSEL", "FSETP"),
    "mufu": ("MUFU",),                    # exp2, rcp, rsqrt...: the special-function unit
    "imad": ("IMAD",),                    # integer multiply-add, also moves (half rate)
    "lop3": ("LOP3",),
    "shfl": ("SHFL",),                    # warp shuffles: cross-lane reductions
    "bar": ("BAR",),                      # CTA barriers (bar.sync, bar.arrive, bar.red)
    "ldg": ("LDG",),                      # global loads into registers
    "stg": ("STG",),
    "lds": ("LDS", "LDSM"),               # shared-memory loads (LDSM: matrix fragments)
    "sts": ("STS",),
    "async": ("LDGSTS", "UTMALDG", "UBLKCP"),  # cp.async, TMA loads, bulk copies
    "spill": ("STL", "LDL"),              # local memory: register spills
}


@dataclasses.dataclass(frozen=True)
class Instruction:
    address: int
    text: str       # "@!P0 BRA 0x4bf0"

    @property
    def opcode(self) -> str:
        """The mnemonic without predicate or modifiers: "BRA", "HGMMA", "IMAD"."""
        words = self.text.split()
        word = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
        return word.split(".")[0]

    @property
    def branch_target(self) -> int | None:
        match = _BRANCH_TARGET.search(self.text)
        return int(match.group(1), 16) if match else None


@dataclasses.dataclass(frozen=True)
class Loop:
    """The instructions from a loop's head to its last backward branch, inner loops included."""

    start: int
    end: int
    opcodes: dict[str, int]     # opcode -> instructions in the body

    @property
    def size(self) -> int:
        return sum(self.opcodes.values())

    def mix(self) -> dict[str, int]:
        """The body's count per ``MIX_GROUPS`` group, and "total"."""
        counts = {group: sum(self.opcodes.get(op, 0) for op in ops)
                  for group, ops in MIX_GROUPS.items()}
        return dict(counts, total=self.size)


def parse(listing: str) -> dict[str, list[Instruction]]:
    """Each function's instructions, by name, from ``cuobjdump -sass`` text."""
    functions: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for line in listing.splitlines():
        if line.strip().startswith("Function :"):
            current = functions.setdefault(line.split(":", 1)[1].strip(), [])
            continue
        match = _INSTRUCTION.match(line)
        if match and current is not None:
            current.append(Instruction(int(match.group(1), 16), match.group(2).strip()))
    return functions


def loops(instructions: list[Instruction]) -> list[Loop]:
    """Every loop, in program order: one per loop head (a backward branch's target),
    spanning to the last branch back to it. A branch to itself (the trailing ``BRA .``
    after ``EXIT``) is not a loop."""
    ends: dict[int, int] = {}
    for instruction in instructions:
        target = instruction.branch_target
        if target is not None and target < instruction.address:
            ends[target] = max(ends.get(target, 0), instruction.address)
    found = []
    for start, end in sorted(ends.items()):
        body = collections.Counter(i.opcode for i in instructions if start <= i.address <= end)
        found.append(Loop(start, end, dict(body)))
    return found


def innermost(found: list[Loop]) -> list[Loop]:
    """The loops that contain no other loop, in program order."""
    return [loop for loop in found
            if not any(other is not loop and loop.start <= other.start and other.end <= loop.end
                       for other in found)]
