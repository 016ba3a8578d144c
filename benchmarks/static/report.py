"""The static cost report: every kernel's sm_90 machine code, counted.

Collects the launches of ``benchmarks.static.cases``, compiles each with every config the
launcher's Hopper autotuner may try (``benchmarks.static.compile``, under the Triton of
the Python given), adds the CUDA backend's kernels (``benchmarks.static.cuda``), and turns
each compiled kernel into one row: registers, spills, shared memory, CTAs per SM, tensor
core / TMA / warp-specialisation use and the hot loop's instruction mix per unit of work.
``markdown`` renders the rows, ``compare`` sets two reports side by side.

A static figure is a prediction to be confirmed by the GPU benchmark, never a speed claim
(benchmarks/README.md, "Static cost report").
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import math
import subprocess
import sys
from pathlib import Path

from benchmarks import harness
from benchmarks.static import cases as cases_module
from benchmarks.static import launches as recording
from benchmarks.static import sass

# One H100/H200 SM (compute capability 9.0): what bounds the CTAs resident at once.
HOPPER_SM = {
    "registers": 65536,          # 32-bit registers per SM
    "register_granule": 256,     # a warp's registers are allocated in units of 256
    "warps": 64,
    "ctas": 32,
    "shared": 233472,            # 228 KiB of shared memory per SM, of which
    "shared_reserved": 1024,     # each CTA holds 1 KiB for the system
}
MIX_COLUMNS = ("tensor", "fp32", "mufu", "imad", "lop3", "shfl", "bar", "ldg", "stg", "lds",
               "sts", "async", "spill")


def ctas_per_sm(registers: int, warps: int, shared: int) -> tuple[int, str]:
    """CTAs of ``warps`` warps at ``registers`` per thread and ``shared`` bytes that fit on
    one Hopper SM at once, and what limits them ("registers", "shared", "warps", "ctas")."""
    per_warp = math.ceil(registers * 32 / HOPPER_SM["register_granule"]) \
        * HOPPER_SM["register_granule"]
    limits = {
        "registers": HOPPER_SM["registers"] // (per_warp * warps),
        "shared": HOPPER_SM["shared"] // (shared + HOPPER_SM["shared_reserved"]),
        "warps": HOPPER_SM["warps"] // warps,
        "ctas": HOPPER_SM["ctas"],
    }
    limiter = min(limits, key=limits.get)
    return limits[limiter], limiter


def hot_loop(loops: list[sass.Loop], rule: str) -> sass.Loop | None:
    """The loop whose instruction mix the report gives (``cases.Work.loop``): the summed
    loops for "sum", else the smallest ("fewest") or largest ("most") of the loops that
    hold the most tensor-core instructions; None when there is no loop ("kernel")."""
    if not loops or rule == "kernel":
        return None
    if rule == "sum":
        total: dict[str, int] = {}
        for loop in loops:
            for opcode, count in loop.opcodes.items():
                total[opcode] = total.get(opcode, 0) + count
        return sass.Loop(loops[0].start, loops[-1].end, total)
    most = max(loop.mix()["tensor"] for loop in loops)
    candidates = [loop for loop in loops if loop.mix()["tensor"] == most]
    return (min if rule == "fewest" else max)(candidates, key=lambda loop: loop.size)


def config_label(record: dict) -> str:
    """"128x64x64 w8 s3": the tile's BLOCK_ sizes, warps and pipeline stages."""
    blocks = [str(value) for name, value in record["config"].items()
              if name.startswith("BLOCK_")]
    options = record["options"]
    return "x".join(blocks + [""])[:-1] + (" " if blocks else "") \
        + f"w{options['num_warps']} s{options['num_stages']}"


def triton_row(case: cases_module.Case, meta: dict, record: dict, assumed: int | None) -> dict:
    """One report row from one compiled Triton kernel."""
    warps = record["options"]["num_warps"]
    ptxas = record["ptxas"]
    ctas, limiter = ctas_per_sm(ptxas["registers"], warps, record["shared"])
    work = cases_module.work(case.op, record["kind"], {**meta, **record["config"]})
    loops = [sass.Loop(loop["start"], loop["end"], loop["opcodes"]) for loop in record["loops"]]
    loop = hot_loop(loops, work.loop)
    threads = warps * 32
    # no loop: one tile per program, so the whole kernel is the tile's cost
    mix = (loop or sass.Loop(0, 0, record["opcodes"])).mix()
    # thread-instructions per unit: a thread's count over its share of the iteration's units
    # (a K step is one unit of the whole CTA: per thread, its figure is the loop's)
    units_per_thread = work.per_iteration / threads if work.unit != "k-step" else 1
    return {
        "backend": "triton", "op": case.op, "case": case.name,
        "kernel": f"{record['kind']} #{record['launch']}",  # #: the op's n-th launch
        "function": record["function"], "config": config_label(record),
        "warps": warps, "stages": record["options"]["num_stages"],
        "registers": ptxas["registers"], "spill_stores": ptxas["spill_stores"],
        "spill_loads": ptxas["spill_loads"], "stack": ptxas["stack"],
        # spill instructions (STL/LDL) in the loop that has most: traffic every iteration
        "loop_spills": max((loop.mix()["spill"] for loop in loops), default=0),
        "shared": record["shared"], "autotuned": record["autotuned"],
        "ctas_per_sm": ctas, "limiter": limiter, "assumed_ctas_per_sm": assumed,
        "wgmma": record["ptx"]["wgmma"], "wgmma_wait": record["ptx"]["wgmma_wait"],
        "mma_sync": record["ptx"]["mma_sync"], "tma": record["ptx"]["tma"],
        "setmaxnreg": record["ptx"]["setmaxnreg"], "cp_async": record["ptx"]["cp_async"],
        "loops": len(loops), "hot_loop": work.loop if loop is not None else "kernel",
        "unit": work.unit, "units_per_iteration": work.per_iteration,
        "mix": mix, "per_unit": round(mix["total"] / units_per_thread, 2),
    }


def cuda_row(record: dict) -> dict:
    """One report row from one compiled csrc kernel (``benchmarks.static.cuda``)."""
    ptxas = record["ptxas"]
    threads = record.get("threads")
    ctas, limiter = (ctas_per_sm(ptxas["registers"], threads // 32, ptxas["shared"])
                     if threads else (None, None))
    loops = [sass.Loop(loop["start"], loop["end"], loop["opcodes"]) for loop in record["loops"]]
    loop = hot_loop(sass.innermost(loops) or loops, "most")
    return {
        "backend": "cuda", "op": record["op"], "case": Path(record["source"]).name,
        "kernel": record["kernel"], "function": record["function"],
        "config": f"{threads} threads" if threads else "", "warps": threads and threads // 32,
        "registers": ptxas["registers"], "spill_stores": ptxas["spill_stores"],
        "spill_loads": ptxas["spill_loads"], "stack": ptxas["stack"],
        "shared": ptxas["shared"], "ctas_per_sm": ctas, "limiter": limiter,
        "wgmma": record["sass"]["hgmma"], "mma_sync": record["sass"]["hmma"],
        "tma": record["sass"]["tma"], "setmaxnreg": record["sass"]["setmaxnreg"],
        "loops": len(loops), "mix": loop.mix() if loop else {"total": record["instructions"]},
    }


def triton_version(python: str) -> str:
    return subprocess.run([python, "-c", "import triton; print(triton.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


def collect(selected: list[cases_module.Case], python: str | None = None, jobs: int = 2,
            cuda: bool = True, progress=None) -> dict:
    """The report of these cases (and of the CUDA kernels): {"env": {...}, "rows": [...]},
    compiled under ``python``'s Triton."""
    python = python or sys.executable
    launches = {case.id: case.launches() for case in selected}
    assumed = _assumed_ctas_per_sm()

    def compile_case(case):
        return case, recording.compile_launches(case.op, launches[case.id],
                                                ["hopper"], all_configs=True, analyse=True,
                                                python=python)

    rows = []
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        compiled = pool.map(compile_case, selected)
        for case in (progress or (lambda items, total, label: items))(
                selected, len(selected), "compiling"):
            _, records = next(compiled)
            for record in records:
                _, _, meta = launches[case.id][record["launch"]]
                assume = assumed.get((case.op, record["kind"]))
                rows.append(triton_row(case, meta, record, assume and assume(
                    record["options"]["num_warps"])))
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "commit": harness._git("rev-parse", "HEAD"), "dirty": harness._dirty(),
           "target": "sm_90", "triton": triton_version(python), "python": python}
    if cuda:
        from benchmarks.static import cuda as cuda_module
        env["nvcc"] = cuda_module.nvcc_version()
        rows += [cuda_row(record) for record in cuda_module.records(jobs=jobs)]
    return {"env": env, "rows": rows}


def _assumed_ctas_per_sm() -> dict:
    """The CTAs per SM a launcher assumes, by (op, kernel): add_layer_norm's persistent
    backward grid. Other grids cover their output tiles and assume nothing."""
    from fasttx.triton import add_layer_norm
    return {("add_layer_norm", "backward"): add_layer_norm.programs_per_sm}



# ---------------------------------------------------------------------------- rendering

TRITON_COLUMNS = ("case", "kernel", "config", "regs", "spill B", "smem KiB", "CTAs/SM",
                  "wgmma (wait)", "TMA", "WS", "loop", "/iter", "/unit") + MIX_COLUMNS
CUDA_COLUMNS = ("source", "kernel", "threads", "regs", "spill B", "static smem B", "CTAs/SM",
                "HGMMA", "HMMA", "TMA", "setmaxnreg", "/iter") + MIX_COLUMNS


def _ctas(row: dict) -> str:
    if row["ctas_per_sm"] is None:
        return "?"
    text = f"{row['ctas_per_sm']} ({row['limiter']})"
    assumed = row.get("assumed_ctas_per_sm")
    return text if assumed is None else text + f", assumes {assumed}"


def _spill(row: dict) -> str:
    if not (row["spill_stores"] or row["spill_loads"]):
        return "0"
    where = " in a loop" if row.get("loop_spills") else " outside loops" \
        if "loop_spills" in row else ""
    return f"**{row['spill_stores']}/{row['spill_loads']}**{where}"


def _triton_cells(row: dict) -> list:
    wgmma = f"{row['wgmma']} ({','.join(map(str, row['wgmma_wait']))})" if row["wgmma"] \
        else f"**none** (mma.sync {row['mma_sync']})" if row["mma_sync"] else "-"
    config = row["config"] + ("" if row["autotuned"] else " (pruned)")
    return [row["case"], row["kernel"], config, row["registers"], _spill(row),
            f"{row['shared'] / 1024:.0f}",
            _ctas(row), wgmma, row["tma"] or "-", row["setmaxnreg"] and "yes" or "-",
            row["hot_loop"], row["mix"]["total"], f"{row['per_unit']:g}/{row['unit']}",
            *(row["mix"].get(column, 0) for column in MIX_COLUMNS)]


def _cuda_cells(row: dict) -> list:
    name = row["function"].split("(")[0].replace("fasttx::", "")
    name = name.replace("(anonymous namespace)::", "")
    return [row["case"], name, row["config"].split()[0] if row["config"] else "?",
            row["registers"], _spill(row), row["shared"], _ctas(row), row["wgmma"],
            row["mma_sync"], row["tma"], row["setmaxnreg"], row["mix"]["total"],
            *(row["mix"].get(column, 0) for column in MIX_COLUMNS)]


def _table(columns, cells) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in cells]


def markdown(report: dict) -> str:
    """The report as Markdown: a table per op (Triton), then the CUDA kernels."""
    env = report["env"]
    lines = [f"# Static cost report: sm_90, Triton {env['triton']}"
             + (f", nvcc {env['nvcc']}" if env.get("nvcc") else ""), "",
             f"{env['date']}, commit {env['commit']}{' (dirty)' if env['dirty'] else ''}. "
             "Compiled ahead of time, no GPU; every figure is the compiler's own report or a "
             "count of its machine code. A prediction to be confirmed by the GPU benchmark, "
             "never a speed claim: see benchmarks/README.md, \"Static cost report\".", "",
             "Columns: registers per thread; spill stores/loads in bytes per thread (ptxas); "
             "shared memory per CTA; CTAs resident per SM and what limits them; warpgroup "
             "MMAs in the PTX and the wait depths of `wgmma.wait_group`; TMA copies; WS: "
             "warp specialisation (`setmaxnreg`); "
             "(pruned): a listed config the Hopper autotuner skips for this launch (it spills "
             "or does not fit); the hot loop and its SASS instructions per "
             "thread per iteration (/iter), per unit of work (/unit: score, element, or one "
             "K step of the tile), and its mix by group (`benchmarks/static/sass.py`).", ""]
    rows = report["rows"]
    for op in dict.fromkeys(row["op"] for row in rows if row["backend"] == "triton"):
        lines += [f"## {op} (Triton)", ""]
        lines += _table(TRITON_COLUMNS, [_triton_cells(row) for row in rows
                                         if row["backend"] == "triton" and row["op"] == op])
        lines.append("")
    cuda_rows = [row for row in rows if row["backend"] == "cuda"]
    if cuda_rows:
        lines += ["## csrc (CUDA)", "",
                  "Static shared memory only (most kernels size theirs at launch); CTAs/SM "
                  "where the launcher's block size is known. /iter: the largest innermost "
                  "loop.", ""]
        lines += _table(CUDA_COLUMNS, [_cuda_cells(row) for row in cuda_rows])
    return "\n".join(lines) + "\n"


COMPARED = ("registers", "spill_stores", "ctas_per_sm", "wgmma", "tma", "setmaxnreg",
            "per_unit")


def _key(row: dict) -> tuple:
    return (row["backend"], row["op"], row["case"], row["kernel"], row["config"],
            row["function"] if row["backend"] == "cuda" else "")


def compare(before: dict, after: dict) -> str:
    """What changed between two reports, kernel by kernel, as Markdown: the rows whose
    registers, spills, CTAs/SM, tensor-core/TMA use or hot-loop instructions differ."""
    old = {_key(row): row for row in before["rows"]}
    new = {_key(row): row for row in after["rows"]}
    label = {"before": _label(before["env"]), "after": _label(after["env"])}
    lines = [f"# Static cost: {label['before']} -> {label['after']}", "",
             "| op | case | kernel | config | " + " | ".join(COMPARED + ("/iter",)) + " |",
             "|" + "---|" * (5 + len(COMPARED))]
    unchanged = 0
    for key in list(old) + [key for key in new if key not in old]:
        if key not in old or key not in new:
            where = "only before" if key in old else "only after"
            lines.append(f"| {key[1]} | {key[2]} | {key[3]} | {key[4]} | {where} |")
            continue
        a, b = old[key], new[key]
        cells = [_change(a.get(name), b.get(name)) for name in COMPARED]
        cells.append(_change(a["mix"]["total"], b["mix"]["total"]))
        if all("->" not in cell for cell in cells):
            unchanged += 1
            continue
        lines.append(f"| {key[1]} | {key[2]} | {key[3][:60]} | {key[4]} | "
                     + " | ".join(cells) + " |")
    lines += ["", f"{unchanged} kernels unchanged."]
    return "\n".join(lines) + "\n"


def _label(env: dict) -> str:
    return f"Triton {env['triton']} @ {(env.get('commit') or '?')[:9]}"


def _change(before, after) -> str:
    if before == after:
        return f"{before}" if before is not None else "-"
    if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before:
        return f"{before} -> {after} ({100 * (after - before) / before:+.0f}%)"
    return f"{before} -> {after}"


# ---------------------------------------------------------------------------- command line

OPS = ("attention", "add_layer_norm", "feed_forward", "cuda")
RESULTS = Path(__file__).resolve().parent.parent / "results" / "static"


def main(argv=None) -> None:
    import argparse
    import os

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks static",
        description="Compiles every kernel for sm_90 (no GPU needed) and reports registers, "
                    "spills, occupancy, tensor-core/TMA use and the hot loops' instruction "
                    "mix per unit of work.")
    parser.add_argument("--op", type=harness.choice_list(OPS), default=list(OPS),
                        help=f"comma-separated, out of {', '.join(OPS)} (default: all)")
    parser.add_argument("--python", default=None,
                        help="the Python whose Triton compiles (a virtualenv with Triton 3.6, "
                             "say); default: this one")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder (default benchmarks/results/static/<triton>-sm_90/)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a report.json to compare this run with")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"),
                        help="compare two report.json files and exit (nothing compiles)")
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (json.loads(path.read_text()) for path in args.compare)
        print(compare(before, after), end="")
        return
    python = args.python or sys.executable
    version = triton_version(python)
    triton_ops = [op for op in args.op if op != "cuda"]
    report = collect(cases_module.cases(triton_ops), python, args.jobs, cuda="cuda" in args.op,
                     progress=harness.progress)
    out = args.out or RESULTS / f"{version}-sm_90"
    name = "report" if set(args.op) == set(OPS) else "report-" + "+".join(args.op)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (out / f"{name}.md").write_text(text)
    print(text, end="")
    print(f"written: {out / name}.json, .md", file=sys.stderr)
    if args.baseline:
        print(compare(json.loads(args.baseline.read_text()), report), end="")
