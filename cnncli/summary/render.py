"""Summaries as text: a Rich table for the terminal (80 columns, or wide), Markdown and CSV.

Residual blocks collapse into one row each unless `expand`; then the block row is followed
by its layers, indented. The input image is the first row, as in the lecture's table, so
that the activation column adds up to the total.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from cnncli.summary.memory import OPTIMIZER_NAMES, format_bytes
from cnncli.summary.walk import group_blocks

def compact(n: int | float) -> str:
    """Three significant digits with K/M/G/T, as the lecture writes 3.2M (exact below 1,000)."""
    n = float(n)
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            v = n / scale
            return (f"{v:.3g}" if v < 1000 else f"{v:.0f}") + suffix
    return f"{int(n)}"


def _shape(shape: list[int]) -> str:
    return "x".join(str(v) for v in shape)


def _kernel(r: dict[str, Any]) -> str:
    if r["type"] == "block":
        return r.get("kernel_desc", "")
    if not r.get("kernel"):
        return ""
    k, s, p = r["kernel"], r["stride"], r["padding"]
    text = f"{k[0]}x{k[1]}" + (f"/{s[0]}" if s and s[0] != 1 else "")
    return text + (f" p{p[0]}" if p and p[0] else "")


def _field(v: int | None) -> str:
    return "" if v is None else str(v)


def receptive_sentence(s: dict[str, Any]) -> str | None:
    """The footer's receptive-field sentence, or None for a model without feature maps."""
    f = s.get("receptive_field")
    if not f:
        return None
    side = s["input_shape"][0]
    text = (f"each unit of the last feature map ({f['layer']}) sees {f['receptive_field']}x{f['receptive_field']} "
            f"input pixels, {f['effective_stride']} apart")
    if f["receptive_field"] > side:
        text += f"; larger than the {side}x{side} input (part of each field lies on padding)"
        if f["receptive_field"] >= 2 * side - 1:
            text += ", so every unit sees the whole image"
    return text


def display_rows(s: dict[str, Any], expand: bool) -> list[dict[str, Any]]:
    """The input row, then layers with residual blocks collapsed (or each block row followed by its layers).

    Each row gets `indent` (True for a layer shown under its block) and `section` (True where a
    new stage of blocks begins, for a separating line); an expanded block's row is a `header`
    whose numbers are left out, so that every column still adds up to the totals.
    """
    h, w, c = s["input_shape"]
    rows = [{"name": "input", "type": "input", "output_shape": [h, w, c], "kernel": None, "stride": None,
             "padding": None, "activations": s["input_activations"], "params": 0, "non_trainable": 0, "macs": 0,
             "receptive_field": 1, "effective_stride": 1, "indent": False, "section": False}]
    stage = None
    for g in group_blocks(s["layers"]):
        if g["type"] != "block":
            rows.append({**g, "indent": False, "section": stage is not None})
            stage = None
            continue
        g_stage = g["name"].rsplit(".", 1)[0]
        rows.append({**g, "indent": False, "section": g_stage != stage})
        stage = g_stage
        if expand:
            rows[-1]["header"] = True  # its layers follow with the numbers
            rows.extend({**r, "indent": True, "section": False} for r in s["layers"] if r["block"] == g["name"])
    return rows


def _layer_table(s: dict[str, Any], wide: bool, expand: bool):
    from rich import box
    from rich.table import Table

    num = (lambda v: f"{v:,}") if wide else compact
    t = Table(title=f"{s['model']}  input {_shape(s['input_shape'])}  {s['num_classes']} classes",
              box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, title_justify="left")
    cols = [("layer", "left"), ("type", "left"), ("kernel", "left"), ("output", "right"), ("RF", "right"),
            ("activ.", "right"), ("params", "right"), ("MACs", "right")]
    if wide:
        cols.insert(5, ("jump", "right"))
        cols.insert(8, ("BN stats", "right"))
    for col, just in cols:
        t.add_column(col, justify=just, no_wrap=True)
    for r in display_rows(s, expand):
        if r["section"]:
            t.add_section()
        name = ("  " + r["name"].rsplit(".", 1)[-1] if r["name"] != r.get("block") else "  add") \
            if r["indent"] else r["name"]
        cells = [name, r["type"], _kernel(r), _shape(r["output_shape"]), _field(r.get("receptive_field")),
                 num(r["activations"]) if r["activations"] else "-", num(r["params"]), num(r["macs"])]
        if wide:
            cells.insert(5, _field(r.get("effective_stride")))
            cells.insert(8, num(r["non_trainable"]))
        if r.get("header"):
            first = 6 if wide else 5
            cells[first:] = [""] * len(cells[first:])
        t.add_row(*cells, style="bold" if r.get("header") else None)
    return t


def _batch_words(mem: dict[str, Any]) -> str:
    """`batch 256` on one device; `per device, batch 256 = 32 x 8 devices, parameters split over them`."""
    n = mem["devices"]
    if n == 1:
        return f"batch {mem['batch_size']:,}"
    how = "parameters and optimizer state split over them" if mem["shard_params"] else "a full copy of the " \
        "parameters on each"
    return f"per device, batch {mem['batch_size']:,} = {mem['batch_per_device']:,} x {n} devices, {how}"


def totals_items(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The totals block as (label, text): parameters, operations, activations, memory, advice, XLA."""
    mem = s["memory"]
    dtype, pdt = mem["dtype"], s["param_dtype"]
    items = [
        ("Parameters", f"{s['total_params']:,} = {s['trainable_params']:,} trainable + "
                       f"{s['non_trainable_params']:,} non-trainable (BatchNorm statistics); "
                       f"{format_bytes(s['params_bytes'])} at {pdt}"),
        ("Operations", f"{s['total_macs']:,} MACs (multiply-accumulates of conv and FC) = "
                       f"{s['total_flops']:,} FLOPs (2 per MAC), per image, forward"),
        ("Activations", f"{s['activations_per_image']:,} per image (forward, each layer's output once) = "
                        f"{format_bytes(s['activations_bytes_per_image'])} at {dtype}; x2 for backward = "
                        f"{format_bytes(s['activations_bytes_per_image_with_backward'])}"),
        ("Memory", f"{_batch_words(mem)}, {dtype}, {OPTIMIZER_NAMES[mem['optimizer']]}: "
                   f"parameters {format_bytes(mem['params_bytes'])} + gradients {format_bytes(mem['grads_bytes'])} "
                   f"+ optimizer state {format_bytes(mem['optimizer_bytes'])} (x{mem['optimizer_state_copies']}) + "
                   f"activations {format_bytes(mem['activations_bytes'])} = {format_bytes(mem['total_bytes'])}"),
    ]
    if mem["budget_bytes"] is not None:
        verdict = "fits" if mem["fits"] else "does not fit"
        items.append(("Fits", f"{format_bytes(mem['budget_bytes'])} ({mem['budget_bytes']:,} bytes)"
                              f"{' per device' if mem['devices'] > 1 else ''}: batch "
                              f"{mem['batch_size']:,} {verdict}; largest batch {mem['largest_batch']:,}, limited by "
                              f"{mem['limited_by']}"))
    if s["fc_params"]:
        items.append(("FC layers", f"hold {s['fc_param_share']:.1%} of the trainable parameters "
                                   f"({s['fc_params']:,})"))
    if s["advice"]:
        items.append(("If short", f"of memory, ranked by what it saves at batch {mem['batch_size']:,}:"))
        for i, a in enumerate(s["advice"], 1):
            fits = f"; largest batch {a['largest_batch']:,}" if a["largest_batch"] is not None else ""
            items.append((f"  {i}.", f"{a['action']}: saves {format_bytes(a['saves_bytes'])}{fits} ({a['detail']})"))
    rf = receptive_sentence(s)
    if rf:
        items.append(("Receptive field", rf))
    items.extend(xla_items(s))
    items.extend(("Note", n) for n in s.get("notes", []))
    return items


def _over_budget(peak: int, mem: dict[str, Any]) -> str:
    budget = mem["budget_bytes"]
    if budget is None or peak <= budget:
        return ""
    return f"; over the {format_bytes(budget)} budget by {format_bytes(peak - budget)}"


def xla_items(s: dict[str, Any]) -> list[tuple[str, str]]:
    x = s["xla"]
    if x is None:
        return [("XLA", "not compiled (--no-compile)")]
    b = s["memory"]["batch_size"]
    out = []
    if x["flops"] is not None:
        per = s["memory"]["batch_per_device"]
        where = f"one of {x['devices']} devices, batch {per:,} each" if x["devices"] > 1 else f"batch {b:,}"
        out.append(("XLA FLOPs", f"{x['backend']}, training step on {where}: {x['flops']:,.0f} vs "
                                 f"{x['analytic_flops']:,} analytic (3 x 2 x MACs x batch), ratio "
                                 f"{x['flops_ratio']:.2f}"))
    if x["peak_bytes"] is not None:
        out.append(("XLA memory", f"arguments {format_bytes(x['argument_bytes'])} + outputs "
                                  f"{format_bytes(x['output_bytes'])} - aliased {format_bytes(x['alias_bytes'])} + "
                                  f"temporaries {format_bytes(x['temp_bytes'])} = {format_bytes(x['peak_bytes'])} vs "
                                  f"{format_bytes(s['memory']['total_bytes'])} analytic, ratio "
                                  f"{x['memory_ratio']:.2f}" + _over_budget(x["peak_bytes"], s["memory"])))
    if x["note"]:
        out.append(("XLA", x["note"]))
    return out


COMPARISON = [
    ("input", lambda s, n: _shape(s["input_shape"])),
    ("classes", lambda s, n: str(s["num_classes"])),
    ("parameters", lambda s, n: n(s["total_params"])),
    ("  trainable", lambda s, n: n(s["trainable_params"])),
    ("  BN statistics", lambda s, n: n(s["non_trainable_params"])),
    ("  in FC layers", lambda s, n: f"{s['fc_param_share']:.0%}"),
    ("MACs / image", lambda s, n: n(s["total_macs"])),
    ("FLOPs / image", lambda s, n: n(s["total_flops"])),
    ("activations / image", lambda s, n: n(s["activations_per_image"])),
    ("  bytes x2 (bwd)", lambda s, n: format_bytes(s["activations_bytes_per_image_with_backward"])),
    ("train memory", lambda s, n: format_bytes(s["memory"]["total_bytes"])
     + (" / device" if s["memory"]["devices"] > 1 else "")),
    ("  at batch", lambda s, n: str(s["memory"]["batch_size"])
     + (f" / {s['memory']['devices']}" if s["memory"]["devices"] > 1 else "")),
    ("largest batch", lambda s, n: "-" if s["memory"]["largest_batch"] is None else f"{s['memory']['largest_batch']:,}"),
    ("XLA FLOPs ratio", lambda s, n: "-" if not (s["xla"] or {}).get("flops_ratio") else f"{s['xla']['flops_ratio']:.2f}"),
    ("XLA memory ratio", lambda s, n: "-" if not (s["xla"] or {}).get("memory_ratio") else f"{s['xla']['memory_ratio']:.2f}"),
]


def _comparison_rows(summaries: list[dict[str, Any]], wide: bool) -> list[list[str]]:
    num = (lambda v: f"{v:,}") if wide else compact
    return [[label] + [f(s, num) for s in summaries] for label, f in COMPARISON]


def print_table(summaries: list[dict[str, Any]], *, wide: bool = False, expand: bool = False) -> None:
    """Print to the terminal: per-layer table and totals for one model, a side-by-side table for several."""
    from rich import box
    from cnncli.console import Console
    from rich.table import Table
    from rich.text import Text

    width = Console().width
    console = Console(width=max(width, 160) if wide else min(width, 80))
    if len(summaries) == 1:
        s = summaries[0]
        console.print(_layer_table(s, wide, expand))
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True, style="bold")
        grid.add_column()
        for label, text in totals_items(s):
            grid.add_row(label, Text(text))
        console.print(grid)
        return
    t = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    t.add_column("")
    for s in summaries:
        t.add_column(s["model"], justify="right")
    for row in _comparison_rows(summaries, wide):
        t.add_row(*row)
    console.print(t)
    for s in summaries:
        for n in s.get("notes", []):
            console.print(f"note ({s['model']}): {n}", highlight=False, markup=False)


def _md_table(header: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i < right_from else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


LAYER_HEADER = ["layer", "type", "kernel", "output", "RF", "jump", "activations", "params", "MACs"]


def layer_cells(s: dict[str, Any], expand: bool) -> list[tuple[list[str], bool]]:
    """(cells under LAYER_HEADER, indented) per displayed row: exact numbers; an expanded block's own
    numbers left blank (its layers carry them)."""
    out = []
    for r in display_rows(s, expand):
        numbers = ["", "", ""] if r.get("header") else [f"{r[k]:,}" for k in ("activations", "params", "macs")]
        out.append(([r["name"], r["type"], _kernel(r), _shape(r["output_shape"]), _field(r.get("receptive_field")),
                     _field(r.get("effective_stride")), *numbers], bool(r["indent"])))
    return out


def to_markdown(summaries: list[dict[str, Any]], *, expand: bool = False) -> str:
    """Markdown: a comparison table for several models, then each model's layer table and totals."""
    lines: list[str] = []
    if len(summaries) > 1:
        lines += _md_table(["", *(s["model"] for s in summaries)], _comparison_rows(summaries, True)) + [""]
    for s in summaries:
        lines.append(f"## {s['model']} (input {_shape(s['input_shape'])}, {s['num_classes']} classes)")
        lines.append("")
        rows = [["&nbsp;&nbsp;" + cells[0] if indent else cells[0], *cells[1:]]
                for cells, indent in layer_cells(s, expand)]
        lines += _md_table(LAYER_HEADER, rows, 4)
        lines.append("")
        lines += [f"  {label.strip()} {text}" if label.startswith(" ") else f"- **{label}** {text}"
                  for label, text in totals_items(s)]
        lines.append("")
    return "\n".join(lines)


CSV_FIELDS = ["model", "name", "type", "block", "output_shape", "kernel", "stride", "padding", "receptive_field",
              "effective_stride", "activations", "params", "non_trainable", "macs"]


def to_csv(summaries: list[dict[str, Any]]) -> str:
    """CSV: one row per layer (every layer, the input first), with the model's name in the first column."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for s in summaries:
        for r in display_rows(s, expand=True):
            if r["type"] == "block":
                continue
            w.writerow([s["model"], r["name"], r["type"], r.get("block") or "", _shape(r["output_shape"]),
                        _shape(r["kernel"] or []), _shape(r["stride"] or []), _shape(r["padding"] or []),
                        _field(r.get("receptive_field")), _field(r.get("effective_stride")), r["activations"], r["params"], r["non_trainable"], r["macs"]])
    return buf.getvalue()
