"""The report: results files -> Markdown tables and PNG plots (and the README's section).

    python -m benchmarks report                          # every folder under results/
    python -m benchmarks report benchmarks/results/nvidia-h200
    python -m benchmarks report --readme README.md       # also refresh the README's section

For each folder it writes ``README.md`` (the run's environment and ceilings, then per op
and sweep a table: each fasttx backend's time and rate, the best peer's, and the speedup
of the fasttx backend over that peer) and one PNG per plot the op module declares
(``<suite>-<plot>.png``). Peers are every provider that is neither fasttx's
(``fasttx-*``, the reference included: it is plain PyTorch and counts as a peer) nor a
floor (a bound such as the bare matmuls); an op module may name its own fasttx providers
(``FASTTX_PROVIDERS``: the drop-in benchmark's ``fasttx-nn-triton``, ``hf-fasttx``).
Rows of providers that do not apply to their case ("n/a: ...") are left out. Results of
a CPU run (``results/cpu/``, rendered like the others) are labelled as a smoke check, not a
performance figure, in their tables and plots, and never reach the top README.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from benchmarks import OPS, harness, load
from fasttx.backends import CPU_TIMINGS_CAVEAT

FASTTX_BACKENDS = ("fasttx-triton", "fasttx-cuda")
METRICS = {"tflops": "TFLOP/s", "gbps": "GB/s", "tokens_per_s": "tokens/s"}
README_BEGIN, README_END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"


# ---------------------------------------------------------------------------- grouping


def metric_of(row: dict) -> str | None:
    """The row's headline rate: TFLOP/s, else GB/s, else tokens/s."""
    return next((name for name in METRICS if row.get(name) is not None), None)


def case_key(row: dict) -> tuple:
    return row["sweep"], row["mode"], row["dtype"], json.dumps(row["shape"], sort_keys=True)


def group_cases(rows: Iterable[dict]) -> dict[tuple, dict[str, dict]]:
    """{case key: {provider: row}}, in the run's order."""
    cases: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        cases.setdefault(case_key(row), {})[row["provider"]] = row
    return cases


def floors_of(op: str) -> tuple[str, ...]:
    return load(op).FLOORS if op in OPS else ()


def fasttx_of(op: str) -> tuple[str, ...]:
    """The op's own fasttx providers: its ``FASTTX_PROVIDERS`` (the drop-in modules'
    ``fasttx-nn-triton``, ``hf-fasttx``, ...), else fasttx-triton and fasttx-cuda."""
    return getattr(load(op), "FASTTX_PROVIDERS", FASTTX_BACKENDS) if op in OPS \
        else FASTTX_BACKENDS


def applicable(rows: Iterable[dict]) -> list[dict]:
    """``rows`` without those of providers that do not apply to their case (a note
    "n/a: ...": another sweep's model)."""
    return [row for row in rows
            if not (row.get("note") or "").startswith(harness.NOT_APPLICABLE)]


def best_peer(providers: dict[str, dict], floors: Iterable[str],
              ours: Iterable[str] = FASTTX_BACKENDS) -> dict | None:
    """The fastest timed provider that is neither one of fasttx's (``ours``) nor a floor
    (fasttx's reference, plain PyTorch, is a peer)."""
    ours, floors = tuple(ours), tuple(floors)
    peers = [row for name, row in providers.items() if row["median_ms"] is not None
             and name not in ours and name not in floors]
    return min(peers, key=lambda row: row["median_ms"], default=None)


def speedups(rows: list[dict], backend: str) -> list[float]:
    """The backend's speedup over the best peer (peer time / its time), case by case."""
    found = []
    op = rows[0]["op"]
    for providers in group_cases(rows).values():
        ours = providers.get(backend)
        peer = best_peer(providers, floors_of(op), fasttx_of(op))
        if ours and peer and ours["median_ms"] is not None:
            found.append(peer["median_ms"] / ours["median_ms"])
    return found


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


# ---------------------------------------------------------------------------- tables


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _timed_cell(row: dict | None) -> str:
    """"1.23 ms · 412 (52%)": time, rate and fraction of the ceiling; or why it did not run."""
    if row is None:
        return "–"
    if row["median_ms"] is None:
        note = row.get("note") or "not timed"
        return note if len(note) <= 48 else note[:45] + "..."
    text = f"{_number(row['median_ms'])} ms"
    metric = metric_of(row)
    if metric:
        text += f" · {_number(row[metric])}"
        if row.get("fraction_of_peak") is not None:
            text += f" ({row['fraction_of_peak']:.0%})"
    return text


def _varying_keys(cases: Iterable[tuple]) -> list[str]:
    """The shape keys whose value differs between the cases (the rest go in the title)."""
    shapes = [json.loads(key[3]) for key in cases]
    keys = list(dict.fromkeys(k for shape in shapes for k in shape))
    return [k for k in keys if len({json.dumps(s.get(k)) for s in shapes}) > 1]


def sweep_table(rows: list[dict]) -> str:
    """One sweep's table: a line per case (shape, mode, dtype); each fasttx backend's
    time and rate, the best peer's, and the speedups over it."""
    cases = group_cases(rows)
    floors, fasttx_providers = floors_of(rows[0]["op"]), fasttx_of(rows[0]["op"])
    keys = _varying_keys(cases)
    backends = [b for b in fasttx_providers if any(r["provider"] == b for r in rows)]
    unit = next((METRICS[m] for m in METRICS if any(r.get(m) is not None for r in rows)), "")
    header = [*keys, "mode", "dtype", *backends, "best peer",
              *[f"{b.removeprefix('fasttx-')} ×" for b in backends]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (_, mode, dtype, shape), providers in cases.items():
        shape = json.loads(shape)
        peer = best_peer(providers, floors, fasttx_providers)
        cells = [str(shape.get(k)) for k in keys] + [mode, dtype]
        cells += [_timed_cell(providers.get(b)) for b in backends]
        cells.append(f"{peer['provider']}: {_timed_cell(peer)}" if peer else "none ran")
        for backend in backends:
            ours = providers.get(backend)
            fine = peer and ours and ours["median_ms"] is not None
            cells.append(f"**{peer['median_ms'] / ours['median_ms']:.2f}×**" if fine else "–")
        lines.append("| " + " | ".join(cells) + " |")
    fixed = {k: v for k, v in json.loads(next(iter(cases))[3]).items() if k not in keys}
    title = ", ".join(f"{k}={v}" for k, v in fixed.items())
    return (f"Cells: median time · {unit} (fraction of the run's ceiling)"
            + (f"; every case: {title}" if title else "") + ".\n\n" + "\n".join(lines))


def all_providers_table(rows: list[dict]) -> str:
    """Every row: times with their 20-80% spread, rate, fraction of peak, memory, note."""
    header = ["sweep", "mode", "dtype", "shape", "provider", "median ms", "p20–p80 ms", "rate",
              "of peak", "peak MiB", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        metric = metric_of(row)
        timed = row["median_ms"] is not None
        cells = [row["sweep"], row["mode"], row["dtype"],
                 " ".join(f"{k}={v}" for k, v in row["shape"].items()), row["provider"],
                 _number(row["median_ms"]) if timed else "–",
                 f"{_number(row['p20_ms'])}–{_number(row['p80_ms'])}" if timed else "–",
                 f"{_number(row[metric])} {METRICS[metric]}" if metric else "–",
                 f"{row['fraction_of_peak']:.0%}" if row.get("fraction_of_peak") else "–",
                 _number(row["peak_mem_mb"]) if row.get("peak_mem_mb") is not None else "–",
                 (row.get("note") or "").replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment_lines(env: dict) -> str:
    """The run's date, GPU, versions and ceilings, as a Markdown list."""
    ceiling = env.get("ceilings") or {}
    lines = [f"- date: {env.get('date')}, commit `{(env.get('commit') or '?')[:12]}`"
             + (" (uncommitted changes)" if env.get("dirty") else ""),
             f"- device: {env.get('gpu') or 'CPU'}"
             + (f" (sm {env['capability']}, {env['gpu_memory_gib']} GiB)"
                if env.get("capability") else ""),
             f"- torch {env.get('torch')}, CUDA {env.get('cuda')}, triton {env.get('triton')}, "
             f"cuDNN {env.get('cudnn')}, flash-attn {env.get('flash_attn')} / "
             f"{env.get('flash_attn_3')}, "
             f"fasttx {env.get('fasttx')}; profile {env.get('profile')}"]
    if ceiling:
        lines.append(f"- ceilings measured in the run: {ceiling['bf16_matmul_tflops']} "
                     f"TFLOP/s (8192³ bf16 matmul), {ceiling['copy_gbps']} GB/s (2 GiB copy)")
    if is_cpu_run(env):
        lines.append(f"- **CPU smoke run**: it checks that the suite runs; {CPU_TIMINGS_CAVEAT}")
    return "\n".join(lines)


def is_cpu_run(env: dict) -> bool:
    """Whether the results were timed on CPU (the smoke profile): no GPU named."""
    return not env.get("gpu")


def op_markdown(data: dict, *, details: bool = False) -> str:
    """One results file as Markdown: its environment, then a table per sweep (the rows of
    providers that do not apply to their case left out)."""
    rows = applicable(data["results"])
    if not rows:
        return "(no results)"
    op = rows[0]["op"]
    parts = [f"## {op}", environment_lines(data["env"])]
    for sweep in dict.fromkeys(row["sweep"] for row in rows):
        sweep_rows = [row for row in rows if row["sweep"] == sweep]
        parts.append(f"### {op}: {sweep}\n\n{sweep_table(sweep_rows)}")
    if details:
        parts.append(f"<details><summary>every provider of every case</summary>\n\n"
                     f"{all_providers_table(rows)}\n\n</details>")
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------- plots


def _field(row: dict, name: str):
    return row["shape"].get(name, row.get(name))


#: metric -> (the ceiling drawn on its plots, its legend label)
CEILING_LINES = {"tflops": ("bf16_matmul_tflops", "bf16 matmul (measured)"),
                 "gbps": ("copy_gbps", "copy (measured)")}


def plot_figure(rows: list[dict], spec: harness.Plot, env: dict):
    """Draws ``spec`` from ``rows``: a line per provider, a panel per value of its panel
    fields, the run's ceiling (``env["ceilings"]``) as a dotted line, and for a CPU run
    the caveat that it is not a performance figure as the figure's title. Returns the
    matplotlib figure, or None when no row is timed for it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - matplotlib.ticker.ScalarFormatter below

    rows = [row for row in rows if row["sweep"] in spec.sweeps and row.get(spec.metric)]
    panels = list(dict.fromkeys(tuple(_field(row, f) for f in spec.panels) for row in rows))
    if not panels:
        return None
    ceiling = env.get("ceilings") or {}
    columns = min(3, len(panels))
    figure, axes = plt.subplots(math.ceil(len(panels) / columns), columns, squeeze=False,
                                figsize=(4.6 * columns, 3.6 * math.ceil(len(panels) / columns)))
    floors = floors_of(rows[0]["op"])
    for axis, panel in zip(axes.flat, panels, strict=False):
        inside = [row for row in rows if tuple(_field(row, f) for f in spec.panels) == panel]
        for provider in dict.fromkeys(row["provider"] for row in inside):
            points = sorted((_field(row, spec.x), row[spec.metric]) for row in inside
                            if row["provider"] == provider)
            style = dict(linestyle="--", color="grey") if provider in floors else {}
            axis.plot(*zip(*points, strict=True), marker="o", markersize=3, label=provider,
                      **style)
        peak_key, peak_label = CEILING_LINES.get(spec.metric, (None, None))
        if ceiling.get(peak_key):
            axis.axhline(ceiling[peak_key], linestyle=":", color="black", label=peak_label)
        if spec.log_x:
            axis.set_xscale("log", base=2)
            axis.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.set(title=", ".join(f"{f}={v}" for f, v in zip(spec.panels, panel, strict=True)),
                 xlabel=spec.x, ylabel=METRICS[spec.metric])
        axis.title.set_fontsize(9)
        axis.grid(alpha=0.3)
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for axis in axes.flat[1:len(panels)]:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    per_line = min(len(labels), 3 * columns)
    legend_lines = math.ceil(len(labels) / per_line)
    figure.legend(handles, labels, loc="lower center", ncol=per_line, fontsize=8)
    if is_cpu_run(env):
        figure.suptitle(f"CPU smoke run: {CPU_TIMINGS_CAVEAT}", fontsize=9, color="firebrick",
                        wrap=True)
    figure.tight_layout(rect=(0, 0.05 * legend_lines / figure.get_figheight() * 3.6, 1, 1))
    return figure


def plot(rows: list[dict], spec: harness.Plot, path: Path, env: dict) -> bool:
    """Saves :func:`plot_figure` of ``rows`` into ``path``; False when no row is timed for it."""
    import matplotlib.pyplot as plt

    drawn = plot_figure(rows, spec, env)
    if drawn is None:
        return False
    drawn.savefig(path, dpi=100)
    plt.close(drawn)
    return True


# ---------------------------------------------------------------------------- folders


def result_files(folder: Path) -> list[Path]:
    """The folder's results files, in the order of OPS (then by name)."""
    def order(path: Path):
        op = next((op for op in OPS if path.stem == op or path.stem.startswith(op + "-")), None)
        return (OPS.index(op) if op else len(OPS), path.stem)
    return sorted(folder.glob("*.json"), key=order)


def render(folder: Path) -> Path:
    """Writes ``folder/README.md`` and the plots of every results file in ``folder``."""
    files = result_files(folder)
    if not files:
        raise ValueError(f"{folder}: no results files (*.json) to report")
    sections = [f"# Benchmark results: {folder.name}",
                "Written by `python -m benchmarks report` from the JSON files beside it."]
    for path in files:
        data = harness.load_results(path)
        sections.append(op_markdown(data, details=True))
        rows = data["results"]
        op = rows[0]["op"] if rows else None
        for spec in (load(op).PLOTS if op in OPS else []):
            image = folder / f"{path.stem}-{spec.name}.png"
            if plot(rows, spec, image, data["env"]):
                sections.append(f"![{op}: {spec.name}]({image.name})")
    readme = folder / "README.md"
    readme.write_text("\n\n".join(sections) + "\n")
    return readme


def results_folders(root: Path) -> list[Path]:
    """Every folder under ``root`` that holds results files, newest run first (by the
    date of its newest file; the CPU smoke run's folder included: its report says it is
    not a performance figure)."""
    def newest(folder: Path) -> str:
        return max(harness.load_results(path)["env"].get("date") or ""
                   for path in result_files(folder))
    folders = [path for path in root.glob("*") if path.is_dir() and result_files(path)]
    return sorted(folders, key=newest, reverse=True)


def latest_gpu_folder(root: Path = harness.RESULTS_DIR) -> Path | None:
    """The results folder of the newest GPU run (CPU folders are never chosen)."""
    newest = None
    for path in root.glob("*/*.json"):
        env = harness.load_results(path)["env"]
        if env.get("gpu") and (newest is None or env["date"] > newest[0]):
            newest = (env["date"], path.parent)
    return newest[1] if newest else None


def readme_section(folder: Path | None, readme: Path) -> str:
    """The README's performance section: the latest GPU run's speedups, per op and sweep,
    with links to the full tables and the plots."""
    if folder is None:
        return ("No GPU results are committed yet: no figure is shown until the suite has "
                "run on a GPU (`python -m benchmarks`).")
    link = Path(os.path.relpath(folder.resolve(), readme.parent.resolve()))
    parts = []
    for path in result_files(folder):
        data = harness.load_results(path)
        rows = applicable(data["results"])
        if not rows or not data["env"].get("gpu"):
            continue
        if not parts:
            parts.append(f"Measured by `python -m benchmarks` ([all tables and plots]"
                         f"({link.as_posix()}/README.md)):\n\n{environment_lines(data['env'])}")
        lines = ["| op | sweep | fasttx backend | speedup over the best peer: geomean "
                 "(min–max) | cases |", "|---|---|---|---|---|"]
        for sweep in dict.fromkeys(row["sweep"] for row in rows):
            sweep_rows = [row for row in rows if row["sweep"] == sweep]
            for backend in fasttx_of(rows[0]["op"]):
                found = speedups(sweep_rows, backend)
                if found:
                    lines.append(f"| {rows[0]['op']} | {sweep} | {backend} | "
                                 f"{geometric_mean(found):.2f}× ({min(found):.2f}–"
                                 f"{max(found):.2f}×) | {len(found)} |")
        parts.append("\n".join(lines))
        op = rows[0]["op"]
        images = [folder / f"{path.stem}-{spec.name}.png"
                  for spec in (load(op).PLOTS if op in OPS else [])]
        parts.extend(f"![{path.stem} {image.stem}]({link.as_posix()}/{image.name})"
                     for image in images if image.exists())
    return "\n\n".join(parts)


def update_readme(readme: Path, folder: Path | None) -> None:
    """Replaces the text between the README's benchmark markers with :func:`readme_section`."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{readme}: no {README_BEGIN} ... {README_END} markers to write between")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_BEGIN}\n{readme_section(folder, readme)}\n"
                      f"{README_END}{tail}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks report",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="*", type=Path,
                        help="results folders (default: every folder under "
                             "benchmarks/results/, the CPU smoke run's included)")
    parser.add_argument("--readme", type=Path, default=None,
                        help="also rewrite this README's benchmark section from the newest "
                             "GPU run")
    args = parser.parse_args(argv)
    try:
        folders = args.folders or results_folders(harness.RESULTS_DIR)
        for folder in folders:
            written = render(folder)
            cpu = any(is_cpu_run(harness.load_results(path)["env"])
                      for path in result_files(folder))
            print(f"written: {written}" + (f" (CPU smoke run: {CPU_TIMINGS_CAVEAT})"
                                           if cpu else ""), file=sys.stderr)
        if args.readme is not None:
            update_readme(args.readme, latest_gpu_folder())
            print(f"updated: {args.readme}", file=sys.stderr)
    except ValueError as error:
        sys.exit(f"error: {error}")
    if not folders and args.readme is None:
        print(f"no results under {harness.RESULTS_DIR} yet: run `python -m benchmarks` first",
              file=sys.stderr)


if __name__ == "__main__":
    main()
