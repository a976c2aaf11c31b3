"""Building blocks of a self-contained HTML report: sortable tables, SVG scatter and bar charts.

Everything is inline (CSS, a few lines of JavaScript, SVG, base64 PNG), so a page
opens offline and can be mailed as one file. Scatter labels are placed so they
overlap neither each other nor the points (:func:`place_labels`); a label that
finds no free spot near its point moves further out, joined to it by a line.
``#sort=COLUMN`` (or ``#sort=-COLUMN``, descending) in the page's URL sorts a
table when it loads, as a click on the column's header does.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

CHAR_W, LINE_H = 6.7, 13.0
"""Width of one character and height of a line of the 11 px monospace labels."""

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:18px 32px}header h1{margin:0 0 6px;font-size:22px}
header ul{margin:0;padding-left:18px;color:#c8cede;font-size:13px}
main{padding:12px 32px 40px;max-width:1400px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;padding:14px 18px;margin:16px 0}
h2{font-size:16px;margin:0 0 10px}.figs{display:flex;flex-wrap:wrap;gap:18px}
table{border-collapse:collapse;font-size:13px;width:100%}
th{background:#eef0f4;text-align:left;cursor:pointer;user-select:none;white-space:nowrap}
th.asc:after{content:" \\25B2"}th.desc:after{content:" \\25BC"}
td,th{padding:4px 9px;border-bottom:1px solid #e3e6ec}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.hl td{background:#fff6d6}tr.bad td{color:#a33}
svg text{font:11px monospace;fill:#1d2330}svg .axis{stroke:#889;stroke-width:1}svg .grid{stroke:#e3e6ec}
svg .lead{stroke:#99a;stroke-width:.8}svg text.label{paint-order:stroke;stroke:#fff;stroke-width:3px}
.notes li{margin:3px 0}img{max-width:100%}
"""

SCRIPT = """
function sortTable(th,dir){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th);
const rows=[...t.tBodies[0].rows];dir=dir||(th.classList.contains('asc')?-1:1);
const key=r=>{const c=r.cells[i],v=c.dataset.v!==undefined?c.dataset.v:c.textContent;const f=parseFloat(v);
return isNaN(f)?v:f};
rows.sort((a,b)=>{const x=key(a),y=key(b);if(typeof x!==typeof y)return typeof x==='number'?-1:1;
return (x<y?-1:x>y?1:0)*dir});
rows.forEach(r=>t.tBodies[0].appendChild(r));
th.parentNode.querySelectorAll('th').forEach(h=>h.classList.remove('asc','desc'));
th.classList.add(dir>0?'asc':'desc');}
document.querySelectorAll('table.sortable th').forEach(th=>th.addEventListener('click',()=>sortTable(th)));
const m=location.hash.match(/sort=(-?)([^&]+)/);
if(m){const name=decodeURIComponent(m[2]);document.querySelectorAll('table.sortable th').forEach(th=>{
if(th.textContent===name)sortTable(th,m[1]?-1:1)})}
"""

COLOURS = ("#3468c0", "#e08a1e", "#3a9a5b", "#c8433a", "#7d5ab5", "#8a6a4a", "#c45aa6", "#6b7280")


@dataclass(frozen=True)
class Point:
    """One point of a scatter chart."""

    x: float
    y: float
    label: str = ""
    colour: str = COLOURS[0]
    strong: bool = False
    """Drawn larger, its label in bold (the winner, say)."""
    tip: str = ""
    """Shown on hover (default: the label)."""


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float

    def overlaps(self, other: Box, pad: float = 1.0) -> bool:
        return not (self.x + self.w + pad <= other.x or other.x + other.w + pad <= self.x
                    or self.y + self.h + pad <= other.y or other.y + other.h + pad <= self.y)


def page(title: str, header: Sequence[str], sections: Sequence[str]) -> str:
    """The whole document: a dark header with ``title`` and ``header`` lines, then the sections."""
    items = "".join(f"<li>{html.escape(h)}</li>" for h in header)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width'><style>{STYLE}</style></head><body>"
            f"<header><h1>{html.escape(title)}</h1><ul>{items}</ul></header><main>{''.join(sections)}</main>"
            f"<script>{SCRIPT}</script></body></html>\n")


def section(heading: str, body: str, *, ident: str = "") -> str:
    attr = f" id='{html.escape(ident)}'" if ident else ""
    return f"<section{attr}><h2>{html.escape(heading)}</h2>{body}</section>"


def table(columns: Sequence[str], rows: Sequence[Sequence[str]], *, keys: Sequence[Sequence[float | None]] = (),
          classes: Sequence[str] = (), ident: str = "") -> str:
    """A sortable table; ``keys[i][j]`` (when given and not None) is cell (i, j)'s sort value."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        sort = keys[i] if i < len(keys) else ()
        tds = []
        for j, text in enumerate(row):
            value = sort[j] if j < len(sort) else None
            attr = "" if value is None or not math.isfinite(value) else f" class='n' data-v='{value:.9g}'"
            tds.append(f"<td{attr}>{html.escape(text)}</td>")
        cls = f" class='{classes[i]}'" if i < len(classes) and classes[i] else ""
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    attr = f" id='{html.escape(ident)}'" if ident else ""
    return f"<table class='sortable'{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def place_labels(anchors: Sequence[tuple[float, float]], labels: Sequence[str], area: Box, *,
                 radius: float = 4.0, obstacles: Sequence[Box] = ()) -> list[Box]:
    """A box per label near its anchor (pixel coordinates, y down), overlapping no other label or anchor.

    Candidates are tried in rings around the anchor (right, left, above, below, the diagonals), nearest
    ring first; boxes stay inside ``area`` and off ``obstacles``. When no ring has room, the box that
    overlaps least is kept.
    """
    dots = [Box(x - radius, y - radius, 2 * radius, 2 * radius) for x, y in anchors]
    placed: list[Box] = list(obstacles)
    order = sorted(range(len(anchors)), key=lambda i: (anchors[i][0], anchors[i][1]))
    boxes: dict[int, Box] = {}
    for i in order:
        (x, y), text = anchors[i], labels[i]
        w, h = CHAR_W * len(text) + 2, LINE_H
        best: tuple[int, Box] | None = None
        for ring in (0, 1, 2, 3, 5, 8):
            d = radius + 3 + ring * LINE_H
            for dx, dy in ((d, -h / 2), (-d - w, -h / 2), (-w / 2, -d - h), (-w / 2, d), (d, -d - h / 2),
                           (-d - w, -d - h / 2), (d, d - h / 2), (-d - w, d - h / 2)):
                box = Box(min(max(x + dx, area.x), area.x + area.w - w),
                          min(max(y + dy, area.y), area.y + area.h - h), w, h)
                clashes = sum(box.overlaps(o) for o in placed) + sum(box.overlaps(o, 0) for o in dots)
                if best is None or clashes < best[0]:
                    best = (clashes, box)
                if clashes == 0:
                    break
            if best is not None and best[0] == 0:
                break
        assert best is not None
        boxes[i] = best[1]
        placed.append(best[1])
    return [boxes[i] for i in range(len(anchors))]


def scatter(points: Sequence[Point], *, x_label: str, y_label: str, title: str = "", front: Sequence[int] = (),
            hline: tuple[float, str] | None = None, y_min: float | None = None, log_x: bool = False,
            width: int = 560, height: int = 360) -> str:
    """An SVG scatter chart with labelled points; ``front`` (point indices) is joined by a dashed line,
    ``hline`` = (y, text) draws a horizontal rule (a budget, say); points below ``y_min`` sit on the bottom
    edge as open triangles, so far outliers do not squash the interesting range."""
    if not points:
        return ""
    left, right, top, bottom = 64, 16, 28 if title else 12, 44
    floor = -math.inf if y_min is None else y_min
    ys = [max(p.y, floor) for p in points]
    fx = _scale([_lx(p.x, log_x) for p in points], left, width - right)
    fy = _scale(ys + ([hline[0]] if hline else []), height - bottom, top)
    anchors = [(fx(_lx(p.x, log_x)), fy(y)) for p, y in zip(points, ys, strict=True)]
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
             f"class='chart scatter'><title>{html.escape(title or y_label)}</title>"]
    if title:
        parts.append(f"<text x='{left}' y='16' font-weight='bold'>{html.escape(title)}</text>")
    parts += _axes(fx, fy, [p.x for p in points], ys, left, width - right, top, height - bottom,
                   log_x)
    parts.append(f"<text x='{(left + width - right) / 2}' y='{height - 6}' text-anchor='middle'>"
                 f"{html.escape(x_label)}</text><text transform='translate(13,{(top + height - bottom) / 2}) "
                 f"rotate(-90)' text-anchor='middle'>{html.escape(y_label)}</text>")
    obstacles = []
    if hline is not None:
        y = fy(hline[0])
        text_w = CHAR_W * len(hline[1])
        dots = [Box(x - 6, yy - 6, 12, 12) for x, yy in anchors]
        spots = [Box(bx, by, text_w, LINE_H) for by in (y - 3 - LINE_H, y + 3)
                 for bx in (width - right - 4 - text_w, left + 6, (left + width - right - text_w) / 2)]
        spot = next((b for b in spots if not any(b.overlaps(d, 0) for d in dots)), spots[0])
        obstacles.append(spot)
        parts.append(f"<line x1='{left}' y1='{y:.1f}' x2='{width - right}' y2='{y:.1f}' stroke='#c8433a' "
                     f"stroke-dasharray='6 4'/><text x='{spot.x:.1f}' y='{spot.y + LINE_H - 3:.1f}' "
                     f"style='fill:#c8433a'>{html.escape(hline[1])}</text>")
    if len(front) > 1:
        ordered = sorted(anchors[i] for i in front)
        path = " ".join(f"{'M' if k == 0 else 'L'}{x:.1f},{y:.1f}" for k, (x, y) in enumerate(ordered))
        parts.append(f"<path d='{path}' fill='none' stroke='#3468c0' stroke-dasharray='4 3' opacity='.6'/>")
    labelled = [i for i, p in enumerate(points) if p.label]
    area = Box(left + 2, 0, width - left - 2, height - bottom - 2)
    unlabelled = [Box(x - 6, y - 6, 12, 12) for i, (x, y) in enumerate(anchors) if not points[i].label]
    boxes = place_labels([anchors[i] for i in labelled], [points[i].label for i in labelled], area,
                         radius=6.0, obstacles=[*obstacles, *unlabelled])  # a point without a label is in the way too
    for i, p in enumerate(points):
        x, y = anchors[i]
        tip = html.escape(p.tip or p.label)
        if p.y < floor:
            parts.append(f"<path d='M{x - 4:.1f},{y - 5:.1f}h8l-4,7z' fill='none' stroke='{p.colour}'>"
                         f"<title>{tip} (below the chart's range)</title></path>")
            continue
        ring = " stroke='#000' stroke-width='1.5'" if p.strong else ""
        parts.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{5 if p.strong else 3.5}' fill='{p.colour}'{ring}>"
                     f"<title>{tip}</title></circle>")
    for i, box in zip(labelled, boxes, strict=True):
        x, y = anchors[i]
        cx, cy = min(max(x, box.x), box.x + box.w), min(max(y, box.y), box.y + box.h)
        if math.hypot(cx - x, cy - y) > 14:
            parts.append(f"<line class='lead' x1='{x:.1f}' y1='{y:.1f}' x2='{cx:.1f}' y2='{cy:.1f}'/>")
        weight = " font-weight='bold'" if points[i].strong else ""
        parts.append(f"<text class='label' x='{box.x + 1:.1f}' y='{box.y + LINE_H - 3:.1f}'{weight}>"
                     f"{html.escape(points[i].label)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def bars(items: Sequence[tuple[str, float]], *, unit: str, title: str, colours: Sequence[str] = (),
         width: int = 560) -> str:
    """Horizontal SVG bars, one per (name, value), the value printed at each bar's end."""
    shown = [(n, v) for n, v in items if math.isfinite(v)]
    if not shown:
        return ""
    name_w = min(260, max(CHAR_W * max(len(n) for n, _ in shown) + 12, 60))
    row, top = 20, 26
    height = top + row * len(shown) + 8
    top_value = max(max(v for _, v in shown), 1e-12)
    span = width - name_w - 90
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
             f"class='chart bars'><title>{html.escape(title)}</title>"
             f"<text x='0' y='16' font-weight='bold'>{html.escape(title)}</text>"]
    for k, (name, value) in enumerate(shown):
        y = top + k * row
        length = max(span * max(value, 0.0) / top_value, 1.0)
        colour = colours[k] if k < len(colours) else COLOURS[0]
        short = name if len(name) * CHAR_W < name_w - 8 else name[:int((name_w - 8) / CHAR_W) - 1] + "…"
        parts.append(f"<text x='{name_w - 6}' y='{y + 13}' text-anchor='end'>{html.escape(short)}"
                     f"<title>{html.escape(name)}</title></text><rect class='bar' x='{name_w}' y='{y + 3}' "
                     f"width='{length:.1f}' height='{row - 6}' fill='{colour}' rx='2'/>"
                     f"<text x='{name_w + length + 5:.1f}' y='{y + 13}'>{_num(value)} {html.escape(unit)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def png(b64: str | None, alt: str) -> str:
    return "" if not b64 else f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def notes(lines: Sequence[tuple[str, str]]) -> str:
    """A list of (subject, note) lines."""
    return "<ul class='notes'>" + "".join(f"<li><b>{html.escape(s)}</b>: {html.escape(n)}</li>"
                                          for s, n in lines) + "</ul>"


def _lx(x: float, log_x: bool) -> float:
    return math.log10(x) if log_x and x > 0 else x


def _scale(values: Sequence[float], low: float, high: float):  # noqa: ANN202 - a float -> float map
    finite = [v for v in values if math.isfinite(v)] or [0.0]
    lo, hi = min(finite), max(finite)
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad
    return lambda v: low + (v - lo) / (hi - lo) * (high - low) if math.isfinite(v) else low


def _axes(fx, fy, xs: Sequence[float], ys: Sequence[float], x0: float, x1: float, y0: float, y1: float,  # noqa: ANN001
          log_x: bool) -> list[str]:
    parts = [f"<line class='axis' x1='{x0}' y1='{y1}' x2='{x1}' y2='{y1}'/>",
             f"<line class='axis' x1='{x0}' y1='{y0}' x2='{x0}' y2='{y1}'/>"]
    for v in _ticks([_lx(x, log_x) for x in xs]):
        x = fx(v)
        if x0 <= x <= x1:
            shown = 10 ** v if log_x else v
            parts.append(f"<line class='grid' x1='{x:.1f}' y1='{y0}' x2='{x:.1f}' y2='{y1}'/>"
                         f"<text x='{x:.1f}' y='{y1 + 14}' text-anchor='middle'>{_num(shown)}</text>")
    for v in _ticks(list(ys)):
        y = fy(v)
        if y0 <= y <= y1:
            parts.append(f"<line class='grid' x1='{x0}' y1='{y:.1f}' x2='{x1}' y2='{y:.1f}'/>"
                         f"<text x='{x0 - 5}' y='{y + 4:.1f}' text-anchor='end'>{_num(v)}</text>")
    return parts


def _ticks(values: Sequence[float], count: int = 5) -> list[float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return []
    lo, hi = min(finite), max(finite)
    if hi - lo < 1e-12:
        return [lo]
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    start = math.ceil(lo / step) * step
    return [start + k * step for k in range(int((hi - start) / step) + 1)]


def _num(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if value == 0 or abs(value) >= 1e-3:
        return f"{value:.4g}"
    return f"{value:.3g}"
