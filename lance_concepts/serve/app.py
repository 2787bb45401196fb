"""HTTP routes of the explorer (Starlette + Jinja2 templates, Plotly charts served from the plotly
package, so nothing is fetched from the internet). Every page's state is in its URL.

Errors a user can cause (a bad condition, an unknown concept, a refused query) are shown on the
page with status 400; nothing the user sends produces a traceback.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError, LanceConceptsError
from .explorer import PAGE_SIZES, Explorer, positive_int

HERE = Path(__file__).parent


def plotly_js_path() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def build_app(explorer: Explorer):
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
    from starlette.templating import Jinja2Templates

    templates = Jinja2Templates(directory=str(HERE / "templates"))

    def render(request, name, status=200, **ctx):
        ctx.setdefault("error", None)
        return templates.TemplateResponse(request, name, {"db": explorer.db, "q": request.query_params, **ctx},
                                          status_code=status)

    def grid(request):
        p = request.query_params
        where, sort = p.get("where", ""), p.get("sort", "")
        size, pg = 48, 0
        try:
            size = positive_int(p.get("size"), "size", 48)
            pg = positive_int(p.get("page"), "page", 0)
            res = explorer.grid(where, sort, pg, size)
        except LanceConceptsError as exc:
            return render(request, "grid.html", status=400, error=str(exc), rows=[], more=False, page=0, size=size,
                          sizes=PAGE_SIZES)
        return render(request, "grid.html", rows=res["rows"], more=res["more"], page=pg, size=size, sizes=PAGE_SIZES)

    def image(request):
        image_id = request.path_params["image_id"]
        try:
            info = explorer.image(image_id)
        except KeyError:
            return render(request, "error.html", status=404, error=f"no image with id {image_id!r}")
        chart = {"data": [{"type": "bar", "orientation": "h", "x": [w for _, w in info["concepts"]][:25][::-1],
                           "y": [c for c, _ in info["concepts"]][:25][::-1], "marker": {"color": "#4c78a8"}}],
                 "layout": {"margin": {"l": 120, "r": 10, "t": 10, "b": 30}, "height": 40 + 18 * min(25, len(info["concepts"])),
                            "xaxis": {"title": {"text": "SpLiCE weight"}}}}
        return render(request, "image.html", image_id=image_id, info=info, chart=chart)

    def search(request):
        p = request.query_params
        try:
            k = positive_int(p.get("k"), "k", 48, maximum=500) or 48
            rows = explorer.search(p.get("text", ""), p.get("like", ""), p.get("where", ""), k)
        except LanceConceptsError as exc:
            return render(request, "search.html", status=400, error=str(exc), rows=[])
        return render(request, "search.html", rows=rows)

    def drift_page(request):
        p = request.query_params
        times = explorer.time_columns()
        ctx = {"times": times, "result": None, "chart": None, "examples": None}
        if not times:
            return render(request, "drift.html", error="the table has no timestamp or date column", **ctx)
        col, every = p.get("time_column", times[0]), p.get("every", "month")
        concepts = [c.strip() for c in p.get("concepts", "").split(",") if c.strip()]
        try:
            top = positive_int(p.get("top"), "top", 8, maximum=50) or 8
            r = explorer.drift(col, every, concepts, top)
            ctx["result"], ctx["chart"] = r, drift_chart(r)
            if p.get("concept") and p.get("window"):
                ctx["examples"] = {
                    "concept": p["concept"], "window": p["window"], "reference": r.reference,
                    "window_rows": explorer.window_examples(col, every, p["window"], p["concept"]),
                    "reference_rows": explorer.window_examples(col, every, r.reference, p["concept"])}
        except LanceConceptsError as exc:
            return render(request, "drift.html", status=400, error=str(exc), **ctx)
        return render(request, "drift.html", **ctx)

    def spurious_page(request):
        p = request.query_params
        cats = explorer.category_columns()
        ctx = {"cats": cats, "result": None, "examples": None, "findings": []}
        col = p.get("label_column", "label" if "label" in cats else (cats[0] if cats else ""))
        try:
            if not col:
                raise InputError("label_column: the table has no text column to use as labels")
            r = explorer.spurious(col)
            ctx["result"], ctx["findings"] = r, r.table.to_pylist()[:200]
            if p.get("label") and p.get("concept"):
                ctx["examples"] = {"label": p["label"], "concept": p["concept"],
                                   **explorer.with_and_without(col, p["label"], p["concept"])}
        except LanceConceptsError as exc:
            return render(request, "spurious.html", status=400, error=str(exc), **ctx)
        return render(request, "spurious.html", **ctx)

    def sql_page(request):
        p = request.query_params
        ctx = {"queries": explorer.named_queries(), "table": None, "truncated": False, "chosen": None}
        name = p.get("query", "")
        try:
            if name:
                ctx["chosen"] = next((q for q in ctx["queries"] if q.name == name), None)
                values = {k[len("p_"):]: v for k, v in p.items() if k.startswith("p_")}
                if p.get("run"):
                    ctx["table"] = explorer.run_named(name, values)
            elif p.get("sql", "").strip():
                ctx["table"], ctx["truncated"] = explorer.run_sql(p["sql"])
        except LanceConceptsError as exc:
            return render(request, "sql.html", status=400, error=str(exc), **ctx)
        return render(request, "sql.html", **ctx)

    def thumb(request):
        image_id = request.path_params["image_id"]
        try:
            size = int(request.query_params.get("size", 160))
            path = explorer.thumbs.get(image_id, explorer.uri_of(image_id), size)
        except KeyError:
            return PlainTextResponse(f"no image with id {image_id!r}", status_code=404)
        except (LanceConceptsError, ValueError) as exc:
            return PlainTextResponse(str(exc), status_code=400)
        except Exception as exc:  # noqa: BLE001 (an unreadable image: its message, not a 500)
            return PlainTextResponse(f"cannot read image {image_id!r}: {exc}", status_code=502)
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    def count_api(request):
        p = request.query_params
        try:
            return JSONResponse({"count": explorer.count(p.get("where", ""), p.get("sort", ""))})
        except LanceConceptsError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    def concepts_api(request):
        return JSONResponse(explorer.suggest(request.query_params.get("prefix", "")))

    def plotly_js(request):
        return FileResponse(plotly_js_path(), media_type="application/javascript",
                            headers={"Cache-Control": "max-age=604800"})

    routes = [
        Route("/", grid), Route("/image/{image_id:path}", image), Route("/search", search),
        Route("/drift", drift_page), Route("/spurious", spurious_page), Route("/sql", sql_page),
        Route("/thumb/{image_id:path}", thumb), Route("/api/concepts", concepts_api),
        Route("/api/count", count_api),
        Route("/static/plotly.min.js", plotly_js),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    async def server_error(request, exc):
        return PlainTextResponse("internal error (see the server log)", status_code=500)

    return Starlette(routes=routes, exception_handlers={500: server_error})


def drift_chart(r) -> dict:
    """Plotly figure: prevalence per window of each reported concept, alerts drawn thicker."""
    alerted = {a["concept"] for a in r.alerts}
    rows = r.table.to_pylist()
    traces = []
    for c in r.concepts:
        pts = [x for x in rows if x["concept"] == c]
        traces.append({"type": "scatter", "mode": "lines+markers", "name": c + (" (alert)" if c in alerted else ""),
                       "x": [x["window"] for x in pts], "y": [x["prevalence"] for x in pts],
                       "customdata": [c] * len(pts),
                       "line": {"width": 4 if c in alerted else 1.5}})
    return {"data": traces, "layout": {"height": 380, "margin": {"t": 20, "r": 10},
                                       "yaxis": {"title": {"text": "prevalence"}, "tickformat": ".0%"},
                                       "xaxis": {"title": {"text": r.every}}, "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom"}}}
