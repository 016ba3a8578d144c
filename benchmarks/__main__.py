"""The benchmark suite's command line.

    python -m benchmarks                          # every op, full profile, GPU 0
    python -m benchmarks --op attention --quick   # a few minutes
    python -m benchmarks --op feed_forward --sweeps hidden-size --providers fasttx-triton,eager
    python -m benchmarks --device cpu             # the smoke profile: checks the suite runs
    python -m benchmarks --list --op attention    # the cases, without running them
    python -m benchmarks --list --quick           # on CPU too: a GPU profile's cases, previewed
    python -m benchmarks report                   # tables and plots (see benchmarks.report)
    python -m benchmarks static                   # the static cost report (no GPU needed)

Each op's results go to ``benchmarks/results/<gpu>/<op>.json`` (``<op>-quick.json`` for the
quick profile; ``--out`` picks another folder), rewritten after every case so that an
interrupted run keeps what it measured. A run of the same GPU, profile and commit adds to
the file (re-measured results replace their earlier rows), so a long run can be split by
``--op``, ``--sweeps``, ``--providers`` or ``-k``. If a provider breaks the GPU (an
illegal address, a device-side assert), the run stops with exit status 3 and keeps every
result so far: run the rest in a new process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks import OPS, harness, load


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Times fasttx's kernels against every peer; `python -m benchmarks report` "
                    "renders the results.")
    parser.add_argument("--op", type=harness.choice_list(OPS), default=list(OPS),
                        help=f"comma-separated, out of {', '.join(OPS)} (default: all)")
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--profile", choices=harness.PROFILES, default=None,
                         help="full (default on a GPU), quick, or smoke (the only one on CPU)")
    profile.add_argument("--quick", action="store_const", const="quick", dest="profile",
                         help="the quick profile: a handful of cases per op")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="default: cuda when a GPU is present, else cpu")
    parser.add_argument("--providers", type=lambda text: text.split(","), default=None,
                        help="comma-separated subset (default: every provider of each op)")
    parser.add_argument("--modes", type=harness.choice_list(harness.MODES), default=None)
    parser.add_argument("--sweeps", type=lambda text: text.split(","), default=None,
                        help="comma-separated sweep names (see --list)")
    parser.add_argument("-k", "--filter", default=None,
                        help="only the cases whose id contains this text")
    parser.add_argument("--input-sets", type=int, default=2,
                        help="input sets rotated through while timing (default 2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default benchmarks/results/<gpu>/)")
    parser.add_argument("--list", action="store_true", help="print the cases and exit")
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # --list previews a GPU profile on CPU (its cases and GPU providers); running it is refused.
    args.gpu_only = args.device == "cpu" and args.profile not in (None, "smoke")
    if args.gpu_only and not args.list:
        parser.error(f"the {args.profile} profile needs a GPU; on CPU only the smoke profile "
                     f"runs (its timings are not performance figures); --list previews the "
                     f"{args.profile} profile's cases")
    args.profile = args.profile or ("full" if args.device == "cuda" else "smoke")
    if args.input_sets < 1:
        parser.error(f"--input-sets must be positive, got {args.input_sets}")
    # Before any op module is loaded (and imports triton): the interpreter on CPU.
    harness.start(args.device)
    known = list(dict.fromkeys(name for op in OPS for name in load(op).PROVIDERS))
    for name in args.providers or ():
        if name not in known:
            parser.error(f"argument --providers: {name!r} is not one of {', '.join(known)}")
    return args


def selected_cases(module, args) -> list[harness.Case]:
    """The op's cases of the profile, narrowed by --modes, --sweeps and --filter."""
    cases = module.cases(args.profile)
    if args.sweeps is not None:
        known = {case.sweep for case in cases}
        unknown = [name for name in args.sweeps if name not in known]
        if len(unknown) == len(args.sweeps):  # none of them is a sweep of this op
            print(f"{module.OP}: no sweep {', '.join(unknown)} (its sweeps: "
                  f"{', '.join(sorted(known))})", file=sys.stderr)
        cases = [case for case in cases if case.sweep in args.sweeps]
    if args.modes is not None:
        cases = [case for case in cases if case.mode in args.modes]
    if args.filter is not None:
        cases = [case for case in cases if args.filter in case.id]
    return cases


def selected_providers(module, args) -> list[str]:
    """The op's providers for this device (a GPU's for a GPU-only profile previewed on
    CPU), narrowed by --providers."""
    device = "cuda" if args.gpu_only else args.device
    return [name for name in harness.providers_for(module, device)
            if args.providers is None or name in args.providers]


def run_op(module, cases, providers, args, env, ceiling) -> Path:
    """Runs every provider on every case; rewrites the op's results file after each
    provider (adding to an earlier file of the same GPU, profile and commit)."""
    out = args.out or harness.results_dir(env)
    path = out / f"{harness.suite_name(module.OP, args.profile)}.json"
    kept, rows = harness.kept_rows(path, env), []

    def save():
        harness.write_results(path, env, ceiling, harness.merge_rows(kept, rows))

    for case in harness.progress(cases, len(cases), module.OP):
        try:
            prepared = harness.Prepared(module, case, args.device, args.input_sets)
        except harness.DeviceError:
            save()
            raise
        except harness.RUN_ERRORS as error:  # the inputs themselves don't fit, say
            note = harness.failure_note(error, args.device)
            rows.extend(harness.result_row(case, name, note=note) for name in providers)
            save()
            continue
        for name in providers:
            try:
                rows.append(harness.run_provider(prepared, name, ceiling))
            except harness.DeviceError as error:
                rows.append(harness.result_row(case, name, note=f"broke the GPU: {error}"))
                save()
                raise
            save()
        del prepared
    return path


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:
        from benchmarks import report
        return report.main(argv[1:])
    if argv[:1] == ["static"]:
        import os
        os.environ.setdefault("TRITON_INTERPRET", "1")  # its launches are recorded on CPU
        from benchmarks.static import report as static_report
        return static_report.main(argv[1:])
    args = parse_args(argv)
    plan = [(module, selected_cases(module, args)) for module in map(load, args.op)]
    if args.list:
        gpu_only = f" [GPU only: the {args.profile} profile does not run on CPU]" \
            if args.gpu_only else ""
        for module, cases in plan:
            providers = ", ".join(selected_providers(module, args))
            print(f"{module.OP}: {len(cases)} cases x providers {providers}{gpu_only}")
            for case in cases:
                print(f"  {case.id}")
        return None
    env = harness.environment(args.device, args.profile)
    ceiling = harness.ceilings(args.device)
    if ceiling:
        print(f"ceilings: {ceiling['bf16_matmul_tflops']} TFLOP/s (bf16 matmul), "
              f"{ceiling['copy_gbps']} GB/s (copy)", file=sys.stderr)
    from benchmarks import report
    for module, cases in plan:
        if not cases:
            print(f"{module.OP}: no case selected", file=sys.stderr)
            continue
        try:
            path = run_op(module, cases, selected_providers(module, args), args, env, ceiling)
        except harness.DeviceError as error:
            print(f"\nerror: {error}\nThe results so far are kept; run what is left in a new "
                  f"process.", file=sys.stderr)
            sys.exit(3)
        print(report.op_markdown(harness.load_results(path)))
        print(f"written: {path}", file=sys.stderr)
    return None


if __name__ == "__main__":
    main()
