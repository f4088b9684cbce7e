"""A self-contained HTML page of a parity report: the summary table, for each failing cell a picture
of its guarded buffer (the map :mod:`parity.reports.render` stored in the cell) with a legend and the list
of stray writes, and optionally the diff against a baseline report. Images are inline PNGs drawn by
matplotlib, an optional extra (``pip install 'indexer-parity[report]'``)."""
from __future__ import annotations

import base64
import html
import io
import json
import math
import sys

import torch

from parity.judge import consumers
from parity.reports import render
from parity.reports import report as rep

EXTRA = "report"
MISSING = (f"the HTML report draws its buffer maps with matplotlib, an optional extra: "
           f"pip install 'indexer-parity[{EXTRA}]' (or: pip install matplotlib)")
COLORS = {
    "correct": "#74c476", "masked": "#d9f0d3", "wrong_value": "#fd8d3c", "spurious_finite": "#807dba",
    "spurious_neg_inf": "#2171b5", "past_valid_len": "#9ecae1", "next_row": "#e31a1c", "row_padding": "#f768a1",
    "outside_allocation": "#49006a", "sentinel": "#f4f4f4", "unallocated": "#ffffff",
    "past_context": "#9ecae1",  # the same class in reports written before the consumer rules
}
LABELS = {
    "correct": "correct", "masked": "-inf as expected (causal mask, past the valid length)", "wrong_value": "wrong value",
    "spurious_finite": "wrong mask: finite where -inf expected",
    "spurious_neg_inf": "wrong mask: -inf / NaN where finite expected",
    "past_valid_len": "finite past the valid length (don't-care for a length-bounded reader)",
    "past_context": "written past context_len (allowed)", "next_row": "stray: previous row's overshoot (next row)",
    "row_padding": "stray: in the row padding", "outside_allocation": "stray: outside the allocation (guard)",
    "sentinel": "padding / guard untouched", "unallocated": "not part of the allocation",
}
FIG_WIDTH_IN, DPI = 11.0, 100
MAX_STRAY_ROWS = 16


class MissingExtra(RuntimeError):
    pass


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MissingExtra(MISSING) from exc


def _draw_ax(ax, codes: torch.Tensor, colors, max_px: int, unit: int) -> None:
    """Draws class codes (each ``unit`` buffer columns wide) one screen pixel or more per bin: wider
    grids are merged first, keeping each bin's most severe class, so no stray column vanishes in the
    resampling. The x axis counts buffer columns."""
    from matplotlib.colors import ListedColormap

    col_bin = max(1, math.ceil(codes.shape[1] / max_px))
    shown = render._merge(codes, 1, col_bin)
    ax.imshow(shown.numpy(), cmap=ListedColormap(colors), vmin=-0.5, vmax=len(colors) - 0.5, aspect="auto",
              interpolation="nearest", extent=(0, shown.shape[1] * col_bin * unit, shown.shape[0], 0))


def map_png(m: dict, title: str = "") -> bytes:
    """The map of one cell as PNG bytes: the whole buffer (left) and each row's logical end (right)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    classes = m["classes"]
    colors = [COLORS.get(c, "#000000") for c in classes]
    grid, ends = render.decode(m, "grid"), render.decode(m, "ends")
    labels = m["grid"]["labels"]
    n = grid.shape[0]
    height = 1.9 + min(12.0, max(0.8, 0.2 * n))  # inches: 0.7 above the panels, 1.2 below for the legend
    fig = Figure(figsize=(FIG_WIDTH_IN, height), dpi=DPI)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(1, 2, width_ratios=(3, 1), wspace=0.08, left=0.16, right=0.98, top=1 - 0.7 / height,
                          bottom=1.2 / height)
    ax, az = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
    cb, pitch, cols = m["grid"]["col_bin"], m["pitch"], m["cols"]
    _draw_ax(ax, grid, colors, int(FIG_WIDTH_IN * DPI * 0.6), cb)
    ax.set_xlim(0, pitch)
    ticks = sorted({0, cols // 2, cols, pitch})
    ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
    step = max(1, math.ceil(n / 40))
    ax.set_yticks([i + 0.5 for i in range(0, n, step)], [labels[i] for i in range(0, n, step)], fontsize=7)
    n_before = sum(lb.startswith("guard -") for lb in labels)
    n_after = sum(lb.startswith("guard +") for lb in labels)
    for y in (n_before, n - n_after):
        ax.axhline(y, color="#333333", lw=0.6)
    if pitch > cols:
        ax.axvline(cols, color="#333333", lw=0.6, ls="--")
    ax.set_title(f"buffer: {m['rows']} rows x pitch {pitch} (cols {cols}"
                 + (f", 1 px = {cb} cols" if cb > 1 else "") + ")", fontsize=8)
    ax.set_xlabel("column", fontsize=7)

    e = m["ends"]
    _draw_ax(az, ends, colors, int(FIG_WIDTH_IN * DPI * 0.25), e["col_bin"])
    width = e["left"] + e["right"]
    az.set_xlim(0, width)
    az.set_ylim(ends.shape[0] + n_after, -n_before)  # aligned with the rows of the left panel
    pad = pitch - cols
    marks = [(e["left"], "end"), (e["left"] + pad, "pad end")] if pad else [(e["left"], "end")]
    for x, _ in marks:
        az.axvline(x, color="#333333", lw=0.6, ls="--")
    first = [(0, f"-{e['left']}")] if e["left"] >= 0.15 * width else []  # room for its label
    az.set_xticks([x for x, _ in first + marks], [name for _, name in first + marks], fontsize=7)
    az.set_yticks([])
    az.set_title("zoom: each row's logical end", fontsize=8)
    if e["row_bin"] == 1 and len(m["strays"]) <= 48:
        for s in m["strays"]:
            if s.get("overshoot_cols") and s["from_row"] is not None:
                inside = s["overshoot_cols"] < e["right"] * 0.8  # else label it at the panel's right edge
                az.text(e["left"] + (s["overshoot_cols"] if inside else e["right"]), s["from_row"] + 0.5,
                        f" +{s['overshoot_cols']} ", fontsize=6, va="center", ha="left" if inside else "right",
                        color="#000000")
    present = [c for c in classes if c in m["counts"] or c == "correct"]
    fig.legend([Patch(facecolor=COLORS[c], edgecolor="#999999", lw=0.4) for c in present],
               [f"{LABELS.get(c, c)} ({m['counts'].get(c, 0)})" for c in present], loc="lower center", ncol=3,
               fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return _paletted(buf.getvalue())


def _paletted(png: bytes) -> bytes:
    """The PNG on a fixed palette, the class colours exactly plus a grey ramp for the text: a quarter
    of the RGBA size, and no class colour merged away as an adaptive palette might."""
    from PIL import Image  # a dependency of matplotlib

    rgb = [int(c[i:i + 2], 16) for c in COLORS.values() for i in (1, 3, 5)]
    rgb += [v for g in range(0, 256, 8) for v in (g, g, g)] + [255, 255, 255]
    palette = Image.new("P", (1, 1))
    palette.putpalette(rgb + [0] * (768 - len(rgb)))
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(palette=palette, dither=0).save(out, format="png", optimize=True)
    return out.getvalue()


def _failed(result: dict) -> list[dict]:
    return [f for f in result.get("findings", []) if not f["ok"]]


def _summary(report: dict) -> str:
    rows = []
    for key, c, fails in rep.summary_rows(report):
        cls = "bad" if c["fail"] or c["error"] else "good"
        rows.append(f"<tr class='{cls}'>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in
                                                  (*key, c["pass"], c["fail"], c["error"], c["skip"], fails)) + "</tr>")
    names = ("backend", "path", "buffer", "pass", "fail", "error", "skip", "failing checks")
    head = "".join(f"<th>{h}</th>" for h in names)
    out = f"<table><tr>{head}</tr>{''.join(rows)}</table>"
    broken = [(n, i) for n, i in report.get("backends", {}).items() if i.get("status") not in (None, "ok")]
    if broken:
        out += "<ul>" + "".join(f"<li>backend {html.escape(n)}: <b>{html.escape(i['status'])}</b> "
                                f"{html.escape(i.get('message', ''))}</li>" for n, i in broken) + "</ul>"
    total = rep.counts(report)
    out += (f"<p>{total.get('pass', 0)} passed, {total.get('fail', 0)} failed, {total.get('error', 0)} errors, "
            f"{total.get('skip', 0)} skipped</p>")
    return out


def _strays_table(m: dict) -> str:
    if not m["strays"]:
        return ""
    rows = "".join(
        f"<tr><td>{'-' if s['from_row'] is None else s['from_row']}</td><td>{html.escape(s['where'])}</td>"
        f"<td>{s['length']}</td><td>{html.escape(', '.join(f'{k} {v}' for k, v in s['lands'].items()))}</td></tr>"
        for s in m["strays"][:MAX_STRAY_ROWS])
    more = m["strays_total"] - min(len(m["strays"]), MAX_STRAY_ROWS)
    tail = (f"<p>... and {more} more stray runs (the JSON report lists up to {render.MAX_STRAYS}).</p>"
            if more > 0 else "")
    return ("<table><tr><th>from row</th><th>where it starts</th><th>elements</th><th>landed in</th></tr>"
            f"{rows}</table>{tail}")


def _cell(result: dict) -> str:
    rid = html.escape(result["id"])
    parts = [f"<h3 id='{rid}'>{rid} <span class='bad'>{html.escape(result['status'])}</span></h3><ul>"]
    parts += [f"<li><b>{html.escape(f['check'])}</b>: {html.escape(f['summary'])}</li>" for f in _failed(result)]
    parts.append("</ul>")
    m = result.get("map")
    if m:
        png = base64.b64encode(map_png(m)).decode()
        parts.append(f"<img alt='buffer map of {rid}' src='data:image/png;base64,{png}'>")
        parts.append(_strays_table(m))
    elif result["status"] == "fail":
        parts.append("<p>(no buffer map in this report: it was written before maps were stored)</p>")
    return "\n".join(parts)


STYLE = """body{font-family:sans-serif;font-size:14px;margin:1.5em;max-width:1200px}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px}
tr.bad td{background:#fff0f0}.bad{color:#b00}img{max-width:100%}pre{background:#f6f6f6;padding:.6em;overflow:auto}
.sw{display:inline-block;width:1.1em;height:.9em;border:1px solid #999;margin:0 .3em 0 1em;vertical-align:middle}"""


def render_html(report: dict, base: dict | None = None, name: str = "report", base_name: str = "base") -> str:
    require_matplotlib()
    env = report.get("environment", {})
    failing = [r for r in report["results"] if r["status"] in ("fail", "error")]
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>parity report {html.escape(name)}</title>"
           f"<style>{STYLE}</style></head><body>",
           f"<h1>parity report: {html.escape(name)}</h1>",
           f"<p>created {html.escape(str(report.get('created')))}, level {html.escape(str(report.get('level')))}, "
           f"device {html.escape(json.dumps(env.get('device')))}, torch {html.escape(str(env.get('torch')))}, "
           f"triton {html.escape(str(env.get('triton')))}</p>",
           *([f"<p><b>{html.escape(line)}</b> ({html.escape('; '.join(report['consumer'].get('sources', [])))})</p>"]
             if (line := consumers.line(report.get("consumer"))) else []),
           "<h2>Summary</h2>", _summary(report)]
    if base is not None:
        d = rep.diff(base, report)
        verdict = {"OK": "at least as good as the base", "REGRESSION": "REGRESSION",
                   "UNUSABLE": "UNUSABLE (cannot compare)"}[d["verdict"]]
        out += [f"<h2>Diff against {html.escape(base_name)}: {verdict}</h2>",
                f"<pre>{html.escape(rep.format_diff(d, base_name, name))}</pre>"]
    out.append(f"<h2>Failing cells ({len(failing)})</h2>")
    if failing:
        out.append("<p>" + " ".join(f"<a href='#{html.escape(r['id'])}'>{html.escape(r['id'])}</a>" for r in failing)
                   + "</p>")
        out.append("<p>Each map lays the guarded output buffer out as the kernel addresses it: a guard row "
                   "before row 0, the rows (logical columns, then padding after the dashed line), a guard row "
                   "after (further guard rows only where written). The right panel zooms on each row's logical "
                   "end and what follows it in memory; +N marks a row's overshoot.</p>")
        out.append("<p>" + " ".join(f"<span class='sw' style='background:{COLORS[c]}'></span>{html.escape(LABELS[c])}"
                                    for c in render.CLASSES if c != "unallocated") + "</p>")
    out += [_cell(r) for r in failing]
    out.append("</body></html>")
    return "\n".join(out)


def write_html(path: str, report: dict, base: dict | None = None, name: str = "report",
               base_name: str = "base") -> None:
    page = render_html(report, base, name, base_name)
    with open(path, "w") as fh:
        fh.write(page)


def cmd_report(args) -> int:
    """``python -m parity report REPORT.json [--diff BASE.json] [--html OUT.html]``."""
    try:
        if args.html:
            require_matplotlib()
        report = rep.load(args.report)
        base = rep.load(args.diff) if args.diff else None
    except (ValueError, MissingExtra) as exc:
        print(f"parity report: {exc}", file=sys.stderr)
        return 2
    print(rep.summary_table(report))
    if base is not None:
        print(rep.format_diff(rep.diff(base, report), args.diff, args.report))
    if args.html:
        write_html(args.html, report, base, args.report, args.diff or "base")
        print(f"html: {args.html}")
    return 0
