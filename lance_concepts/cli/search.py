"""``lance-concepts search``, ``index`` and ``edit``: vector search with concept filters, and concept removal.
"""
from __future__ import annotations

import click

from .group import main
from .options import DB_OPTION, FORMAT_OPTION, OUTPUT_OPTION, STORAGE_OPTION, TABLE_OPTION, emit, parse_storage_options


@main.command("search")
@DB_OPTION
@click.argument("query", required=False)
@click.option("--image", type=click.Path(dir_okay=False), default=None, help="Query by image: a path.")
@click.option("--where", default=None,
              help="Condition, e.g. \"concept('sand') > 0.1 AND label = 'dog'\" (columns, concept('name'), "
                   "= != < <= > >= IN BETWEEN LIKE IS NULL, AND OR NOT; strings in quotes).")
@click.option("-k", "k", default=10, show_default=True, type=int, help="How many results.")
@click.option("--without", multiple=True, help="Concept to remove from the query (repeatable).")
@click.option("--with", "with_", multiple=True, help="Concept to add to the query (repeatable).")
@click.option("--with-weight", type=float, default=None,
              help="Weight of an added concept (default: the query's largest concept weight).")
@click.option("--column", "vector_column", default="embedding", show_default=True,
              help="Vector column to search (e.g. one written by `edit`).")
@click.option("--columns", default=None, help="Metadata columns to return, comma-separated (default: all).")
@click.option("--concepts", "n_concepts", default=5, show_default=True, help="Concepts shown per result.")
@click.option("--nprobes", type=int, default=None, help="IVF partitions to probe (default: from the index).")
@click.option("--refine-factor", type=int, default=None, help="Re-rank this many times k exactly (IVF_PQ).")
@click.option("--exact", is_flag=True, help="Exact search: ignore the vector index.")
@TABLE_OPTION
@STORAGE_OPTION
@FORMAT_OPTION
@OUTPUT_OPTION
def search_cmd(db, query, image, where, k, without, with_, with_weight, vector_column, columns, n_concepts, nprobes,
               refine_factor, exact, table, fmt, output, storage_options):
    """Find images by meaning (QUERY text or --image), under a concept/metadata condition.

    The condition is a prefilter: k results come back whenever k images pass it, all of them when
    fewer do, none when none does. --without/--with edit the query (SpLiCE concept arithmetic).
    """
    import json

    import pyarrow as pa

    from ..retrieval.searcher import search as run_search

    cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    result = run_search(db, query, image=image, where=where, k=k, without=list(without), with_=list(with_),
                        with_weight=with_weight, table=table, vector_column=vector_column, columns=cols,
                        concepts=n_concepts, nprobes=nprobes, refine_factor=refine_factor, exact=exact,
                        storage_options=parse_storage_options(storage_options))
    info = json.loads(result.schema.metadata[b"query"])
    if without or with_:
        q = ", ".join(f"{c} {w:.3f}" for c, w in list(info.get("query_concepts", {}).items())[:8]) or "none"
        click.echo(f"query concepts: {q}", err=True)
        for c, w in info.get("removed", {}).items():
            click.echo(f"removed {c!r} (weight {w:.3f}{', not in the query' if w == 0 else ''})", err=True)
        for c, w in info.get("added", {}).items():
            click.echo(f"added {c!r} (weight {w:.3f})", err=True)
    if fmt in ("table", "csv") and "concepts" in result.column_names:
        text = [None if v is None else ", ".join(f"{d['concept']} {d['weight']:.3f}" for d in v)
                for v in result.column("concepts").to_pylist()]
        i = result.column_names.index("concepts")
        result = result.set_column(i, "concepts", pa.array(text, pa.string()))
    summary = f"{result.num_rows} result(s); plan: {info.get('plan')}" if fmt == "table" else None
    emit(result, fmt, output, summary=summary)


@main.command("index")
@DB_OPTION
@TABLE_OPTION
@click.option("--index-type", type=click.Choice(["auto", "IVF_PQ", "IVF_HNSW_SQ", "IVF_FLAT"], case_sensitive=False),
              default="auto", show_default=True,
              help="auto: exact IVF_FLAT below 5,000 rows, else IVF_PQ (parameters from the table size).")
@click.option("--column", default="embedding", show_default=True, help="Vector column to index.")
@click.option("--no-scalar", is_flag=True, help="Only the vector index, not the scalar indexes filters use.")
@click.option("--lancedb-search", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Record the table's model for plain lancedb `table.search(\"text\")` (writers must then "
                   "import lance_concepts); auto: when the project's writers support it.")
@STORAGE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def index_cmd(db, table, index_type, column, no_scalar, lancedb_search, as_json, storage_options):
    """Build the vector index and the scalar indexes concept filters use (LABEL_LIST on concept_ids,
    BTREE/BITMAP on ids and metadata), and register the table's model for LanceDB text search."""
    import json

    from ..retrieval.index import index as run_index

    report = run_index(db, table, index_type=index_type, column=column, scalar=not no_scalar,
                       lancedb_search={"auto": "auto", "on": True, "off": False}[lancedb_search],
                       storage_options=parse_storage_options(storage_options))
    if as_json:
        click.echo(json.dumps(report, indent=1, default=str))
        return
    v = report["vector_index"]
    params = ", ".join(f"{k}={val}" for k, val in v.items() if k not in ("index_type", "build_s"))
    click.echo(f"{report['table']}.{report['column']}: {v['index_type']} over {report['rows']} vectors "
               f"({params}) in {v['build_s']:.1f}s")
    if report.get("scalar_indexes") is not None:
        click.echo(f"scalar indexes: {', '.join(report['scalar_indexes']) or 'none'} "
                   f"in {report['scalar_build_s']:.1f}s")
    if report.get("embedding_function"):
        click.echo(f"registered {report['embedding_function']!r}: after `import lance_concepts`, "
                   "lancedb's table.search(\"text\") embeds with this table's model")
    elif report.get("embedding_function_note"):
        click.echo(f"LanceDB text search: {report['embedding_function_note']}")


@main.command("edit")
@DB_OPTION
@click.option("--remove-concept", "remove", multiple=True, required=True, help="Concept to remove (repeatable).")
@click.option("--into", required=True, help="New vector column for the edited embeddings.")
@click.option("--labels-column", "labels", multiple=True,
              help="Label column to report zero-shot accuracy on, before and after (repeatable).")
@click.option("--prompts", multiple=True,
              help="Prompt template with {} for the label, e.g. 'a photo of a {}' (all label columns), or "
                   "COLUMN=TEMPLATE for one. Default: 'a photo of a {}'.")
@click.option("--overwrite", is_flag=True, help="Replace the column if it exists.")
@TABLE_OPTION
@STORAGE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def edit_cmd(db, remove, into, labels, prompts, overwrite, table, as_json, storage_options):
    """Remove concepts from every embedding (SpLiCE model editing) into a new vector column, and
    report zero-shot accuracy per label column before and after."""
    import json
    import re

    from ..errors import InputError
    from ..retrieval.edit import edit as run_edit

    per_column, common = {}, []
    for p in prompts:
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", p, re.S)
        if m and m.group(1) in labels:
            per_column[m.group(1)] = m.group(2)
        else:
            common.append(p)
    if len(common) > 1:
        raise InputError("give one --prompts template for all label columns, or COLUMN=TEMPLATE per column")
    spec = dict(per_column)
    if common:
        spec["*"] = common[0]
    report = run_edit(db, list(remove), into, labels_columns=list(labels), prompts=spec or None, table=table,
                      overwrite=overwrite, storage_options=parse_storage_options(storage_options))
    click.echo(json.dumps(report.to_dict(), indent=1) if as_json else str(report))


if __name__ == "__main__":  # pragma: no cover
    main()
