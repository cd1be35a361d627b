"""The localisation page: the summary table and the overlays, in one self-contained HTML file."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

import numpy as np

from mammolens.explain.overlay import fit_within, png_bytes

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}tr.base td{color:#666;font-style:italic}
.grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:320px}figure img{width:320px}
figcaption{font-size:12px}
"""


def localisation_html(
    title: str,
    table: Sequence[dict],
    metrics: Sequence[str],
    tiles: Sequence[tuple[np.ndarray, str]],
    notes: Sequence[str] = (),
) -> str:
    """HTML with the per-method means [95 % CI] and the overlay images embedded as data URIs."""
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    body = []
    for row in table:
        cells = "".join(
            f"<td>{row[m]:.3f} [{row[m + '_lo']:.3f}, {row[m + '_hi']:.3f}]</td>" for m in metrics
        )
        css = ' class="base"' if row["method"] in ("centre-prior", "breast-mask") else ""
        body.append(
            f"<tr{css}><td class=l>{html.escape(row['model'])}</td><td class=l>{html.escape(row['method'])}</td>"
            f"<td>{row['images']}</td><td>{row['groups']}</td>{cells}</tr>"
        )
    figures = []
    for rgb, caption in tiles:
        data = base64.b64encode(png_bytes(fit_within(rgb, 640))).decode("ascii")
        figures.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    notes_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{notes_html}"
        f"<table><tr><th class=l>model</th><th class=l>method</th><th>images</th><th>groups</th>{head}</tr>"
        f"{''.join(body)}</table><h2>Overlays (green: marked finding; white: top-k % region)</h2>"
        f"<div class=grid>{''.join(figures)}</div></body></html>"
    )
