"""A self-contained HTML page of error slices: the figure, then each slice with thumbnails of its
wrong and right example images (embedded, so the page can be mailed; an unreadable image shows its uri)."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

THUMB = 96


def thumbnail_uri(root: str | None, uri: str) -> str | None:
    """data: URI of a small JPEG of the image at ``uri``, or None when it cannot be read."""
    from ..lake.decode import ImageDecodeError, decode_image, read_location

    try:
        im = decode_image(read_location(root, uri))
    except ImageDecodeError:
        return None
    im.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _cell(root, uris, css) -> str:
    out = []
    for u in uris:
        src = thumbnail_uri(root, u)
        t = html.escape(u)
        out.append(f'<img class="{css}" src="{src}" title="{t}" alt="{t}">' if src else f"<code>{t}</code>")
    return " ".join(out) or "-"


def slices_html(res, path, root: str | None = None, title: str = "Concept slices of model errors") -> Path:
    """Write the page for :class:`~lance_concepts.query.slices.SlicesResult` ``res`` to ``path``."""
    png = io.BytesIO()
    res.plot(png)
    fig = base64.b64encode(png.getvalue()).decode()
    what = "error rate" if res.metric == "error" else f"mean {res.params.get('score_column')}"
    rows = []
    for r in res.table.to_pylist():
        rows.append(f"<tr><td>{r['rank']}</td><td>{html.escape(r['scope'])}</td><td><b>{html.escape(r['slice'])}</b>"
                    f"</td><td>{r['metric_slice']:.3f} vs {r['metric_rest']:.3f}</td><td>{r['n_slice']}</td>"
                    f"<td>{r['q_value']:.2g}</td><td>{_cell(root, r['wrong_examples'], 'wrong')}</td>"
                    f"<td>{_cell(root, r['right_examples'], 'right')}</td></tr>")
    body = "\n".join(rows) or '<tr><td colspan="8">no slice with q &lt; alpha</td></tr>'
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>
body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;
padding:4px;vertical-align:top}} img.wrong{{border:3px solid #c0392b}} img.right{{border:3px solid #27ae60}}
</style></head><body><h1>{html.escape(title)}</h1>
<p>{html.escape(res.summary().splitlines()[0])}</p>
<img src="data:image/png;base64,{fig}" alt="slices figure">
<table><tr><th>#</th><th>scope</th><th>slice</th><th>{html.escape(what)} (slice vs rest)</th><th>n</th><th>q</th>
<th>wrong examples</th><th>right examples</th></tr>
{body}</table></body></html>"""
    p = Path(path)
    p.write_text(page, encoding="utf-8")
    return p
