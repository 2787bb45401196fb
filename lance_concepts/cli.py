"""Command-line interface: every command is a thin shell over the Python function of the same name."""
from __future__ import annotations

import sys

import click

from . import __version__


class _FriendlyErrors(click.Group):
    """Turn the package's expected errors (missing weights, bad input) into one clear line, not a traceback."""

    def invoke(self, ctx):
        from .errors import LanceConceptsError

        try:
            return super().invoke(ctx)
        except LanceConceptsError as exc:
            click.secho(f"Error: {exc}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=_FriendlyErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lance-concepts")
def main():
    """Make an image collection interpretable and queryable.

    Images become LanceDB rows with a CLIP embedding, SpLiCE concept weights over a word
    vocabulary and FALCON feature labels; DuckDB answers questions about them in SQL.
    """


# --- commands (keep each one thin: parse options, call the Python API, print) ---

MODEL_OPTION = click.option("--model", default="ViT-B-32", show_default=True,
                            help="open_clip architecture, or 'demo' for the offline demo model.")
PRETRAINED_OPTION = click.option("--pretrained", default="laion2b_s34b_b79k", show_default=True,
                                 help="open_clip pretrained tag or a local weights file (.bin/.pt/.safetensors).")


def _storage_options(pairs):
    from .errors import InputError

    out = {}
    for p in pairs:
        if "=" not in p:
            raise InputError(f"--storage-option takes KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = v
    return out or None


_STORAGE_OPTION = click.option(
    "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
    help="Object-store option passed to Lance/LanceDB (repeatable), e.g. aws_region=eu-west-1, "
         "aws_endpoint=http://127.0.0.1:9000, allow_http=true; credentials also come from AWS_* variables.")
_ENGINE_OPTION = click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                              help="local: this machine; ray: Ray Data actors + lance-ray writes (scale-out).")
_RAY_ADDRESS_OPTION = click.option("--ray-address", default=None,
                                   help="With --engine ray: the cluster ('auto', 'ray://head:10001'); "
                                        "default: a local Ray instance.")
_RAY_ACTORS_OPTION = click.option("--ray-actors", type=int, default=None,
                                  help="With --engine ray: model actors (default: one per GPU, else per CPU).")


@main.command()
@click.option("--db", default="demo.lancedb", show_default=True, help="LanceDB directory or URI to write to.")
@click.option("--images", "n_images", default=600, show_default=True, help="Number of demo-world images to draw.")
@click.option("--data-dir", default=None, help="Where to write the drawn images (default: next to --db).")
@click.option("--seed", default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(db, n_images, data_dir, seed, quiet):
    """Run the main job offline on the demo world and the demo model.

    Draws a small world of coloured shapes on backgrounds (labels, splits, timestamps, a planted
    drift and a planted spurious correlation), ingests it into a local LanceDB table, and prints
    what the concept queries find next to the planted truth. It also writes demo-drift.png,
    demo-spurious.png and demo-report.html beside the folder of drawn images. Re-running reuses them
    and skips what is already ingested.
    """
    from .demo import demo as run_demo

    result = run_demo(db=db, n_images=n_images, data_dir=data_dir, seed=seed, quiet=quiet, echo=click.echo)
    click.echo(result.summary())


@main.group()
def vocab():
    """Concept vocabularies: inspect, build from captions, pre-compute embeddings."""


@vocab.command("show")
@click.argument("spec", default="default")
@click.option("--limit", default=20, show_default=True, help="How many concepts to list.")
def vocab_show(spec, limit):
    """Describe a vocabulary: a built-in ('default', 'demo'), a SpLiCE list ('splice-laion-10k',
    'splice-laion-bigrams', 'splice-mscoco', downloaded once and cached) or a text file."""
    from .vocabulary import load_vocabulary

    v = load_vocabulary(spec)
    click.echo(f"name:    {v.name}\nsource:  {v.source}\nsize:    {len(v)}\ndigest:  {v.digest}")
    click.echo("first:   " + ", ".join(v.concepts[:limit]))


@vocab.command("build")
@click.argument("source")
@click.option("--column", default="caption", show_default=True, help="Text column holding captions.")
@click.option("--table", default="images", show_default=True, help="Table name when SOURCE is a LanceDB database.")
@click.option("--top-n", default=10_000, show_default=True, help="Keep the N most frequent words and bigrams.")
@click.option("--min-count", default=2, show_default=True, help="Ignore terms seen fewer times.")
@click.option("--no-bigrams", is_flag=True, help="Words only.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Text file to write, one concept per line.")
def vocab_build(source, column, table, top_n, min_count, no_bigrams, out):
    """Build a vocabulary from a caption column of SOURCE (a CSV/Parquet/JSONL file, a .lance
    dataset or a LanceDB database): lowercase words without digits, punctuation or stopwords, and
    adjacent-word bigrams, most frequent first."""
    from .vocabulary import build_vocabulary

    v = build_vocabulary(source, column=column, table=table, top_n=top_n, min_count=min_count,
                         bigrams=not no_bigrams)
    v.save(out)
    click.echo(f"wrote {len(v)} concepts to {out} (digest {v.digest}); most frequent: {', '.join(v.concepts[:10])}")


@vocab.command("embed")
@click.argument("spec", default="default")
@MODEL_OPTION
@PRETRAINED_OPTION
@click.option("--template", default=None, help="Prompt template such as 'a photo of {}' (SpLiCE uses none).")
def vocab_embed(spec, model, pretrained, template):
    """Encode a vocabulary with a CLIP text tower and cache the embeddings for later runs."""
    from .encoder import load_encoder
    from .vocabulary import load_vocabulary

    v = load_vocabulary(spec)
    enc = load_encoder(model, pretrained)
    emb = v.embed(enc, template=template)
    click.echo(f"{len(v)} concepts x {emb.shape[1]} dims cached for model {enc.fingerprint} (vocabulary {v.digest})")


# --- falcon (feature labels) ---
def _falcon_explainer_options(f):
    opts = [
        click.option("--high-std", default=5.0, show_default=True,
                     help="Highly activating: value >= mean + HIGH_STD x std over the whole representation."),
        click.option("--min-group-size", default=10, show_default=True,
                     help="Keep feature groups with MORE than this many images."),
        click.option("--coherence-threshold", default=0.8, show_default=True,
                     help="Interpretable: mean pairwise CLIP cosine of the group's images (or crops) above this."),
        click.option("--top-k", default=10, show_default=True, help="Concepts kept per image after the softmax."),
        click.option("--n-terms", default=8, show_default=True, help="Words and phrases reported per group (each)."),
        click.option("--low-similarity", default=0.3, show_default=True,
                     help="Lowly activating images must be at least this similar on the other features."),
        click.option("--max-low", default=10, show_default=True, help="At most this many lowly activating images."),
        click.option("--spurious-threshold", default=0.25, show_default=True,
                     help="Remove a term when the lowly activating images score it at least this fraction of "
                          "the group's top score (recalibrated FALCON cut-off)."),
        click.option("--temperature", type=float, default=None,
                     help="Softmax scale on CLIP cosines (default: the CLIP model's learned logit scale, "
                          "100 for CLIP ViT-B-32 as in FALCON)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@main.group("falcon", invoke_without_command=True)
@click.option("--db", default=None, help="LanceDB directory or URI (required).")
@click.option("--table", default="images", show_default=True, help="Images table.")
@click.option("--features-column", default="embedding", show_default=True,
              help="Vector column whose features are explained (default: the CLIP embedding).")
@click.option("--vocab", "vocabulary", default=None,
              help="Concept vocabulary (built-in name or file); default: the table's concepts table.")
@click.option("--model", "clip_model", default=None, help="CLIP model for text and crops (default: the table's).")
@click.option("--pretrained", default=None, help="Its pretrained tag or weights file (with --model).")
@click.option("--evidence", type=click.Choice(["clip", "splice"]), default="clip", show_default=True,
              help="Per-image concept evidence: CLIP similarities (softmax) or the stored SpLiCE weights.")
@click.option("--caption-column", default=None, help="Caption column whose captions join the softmax.")
@click.option("--target-model", type=click.Path(dir_okay=False), default=None,
              help="Weights file (state dict) of a torchvision/timm model: GradCAM crops, and its features "
                   "are computed into --features-column when that column is missing.")
@click.option("--target-arch", default=None, help="Architecture of --target-model: torchvision name or timm:<name>.")
@click.option("--target-layer", default=None, help="GradCAM layer (default: layer4 or the last Conv2d).")
@click.option("--target-size", default=224, show_default=True, help="Input size of the target model.")
@click.option("--cam-threshold", default=0.6, show_default=True, help="GradCAM binarisation threshold.")
@click.option("--image-root", default=None, help="Directory that relative image uris are relative to.")
@click.option("--representation", default=None, help="Name stored with the labels (default: the column name).")
@_falcon_explainer_options
@click.option("--no-write", is_flag=True, help="Print only; do not write the features tables.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--max-ids", default=50, show_default=True, help="Image ids listed per group in the output.")
@_STORAGE_OPTION
@click.pass_context
def falcon_cmd(ctx, db, table, features_column, vocabulary, clip_model, pretrained, evidence, caption_column,
               target_model, target_arch, target_layer, target_size, cam_threshold, image_root, representation,
               high_std, min_group_size, coherence_threshold, top_k, n_terms, low_similarity, max_low,
               spurious_threshold, temperature, no_write, fmt, max_ids, storage_options):
    """Label the features of a representation with concepts (FALCON) and store the labels.

    Writes the tables `features` (one row per feature group), `feature_concepts` (long form) and
    `image_features` (each image's activated groups and their labels). `falcon transfer` carries
    labels to another representation of the same images.
    """
    if ctx.invoked_subcommand is not None:
        return
    if not db:
        raise click.UsageError("--db is required")
    from .errors import InputError
    from .falcon import default_transform, falcon, load_target_model

    encoder = None
    if clip_model:
        from .encoder import load_encoder

        encoder = load_encoder(clip_model, pretrained)
    model = transform = None
    if target_model or target_arch:
        if not (target_model and target_arch):
            raise InputError("--target-model needs --target-arch (and the other way round)")
        model = load_target_model(target_arch, target_model)
        transform = default_transform(target_size)
    res = falcon(db, features_column, table=table, vocabulary=vocabulary, encoder=encoder, evidence=evidence,
                 caption_column=caption_column, model=model, transform=transform, target_layer=target_layer,
                 cam_threshold=cam_threshold, image_root=image_root, representation=representation,
                 write=not no_write, max_ids=max_ids, high_std=high_std, min_group_size=min_group_size,
                 coherence_threshold=coherence_threshold, top_k=top_k, n_terms=n_terms,
                 low_similarity=low_similarity, max_low=max_low, spurious_threshold=spurious_threshold,
                 temperature=temperature, storage_options=_storage_options(storage_options))
    click.echo(res.to_json() if fmt == "json" else str(res))


@falcon_cmd.command("transfer")
@click.option("--db", required=True, help="LanceDB directory or URI.")
@click.option("--table", default="images", show_default=True)
@click.option("--from-column", required=True, help="Representation already labelled by `falcon`.")
@click.option("--to-column", required=True, help="Representation of the same images to label.")
@click.option("--alpha", default=1e-3, show_default=True, help="Ridge penalty, relative to the mean feature variance.")
@click.option("--test-fraction", default=0.2, show_default=True, help="Rows held out to report the map's R^2.")
@click.option("--min-weight", default=0.5, show_default=True,
              help="A target feature is labelled when a labelled group makes up at least this much of it.")
@click.option("--interpretable-only", is_flag=True, help="Carry only the labels of interpretable groups.")
@click.option("--no-write", is_flag=True, help="Print only; do not write the features tables.")
@_STORAGE_OPTION
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def falcon_transfer_cmd(db, table, from_column, to_column, alpha, test_fraction, min_weight, interpretable_only,
                        no_write, fmt, storage_options):
    """Carry FALCON labels from --from-column to --to-column through a ridge map."""
    from .falcon import transfer

    res = transfer(db, from_column, to_column, table=table, alpha=alpha, test_fraction=test_fraction,
                   min_weight=min_weight, interpretable_only=interpretable_only, write=not no_write,
                   storage_options=_storage_options(storage_options))
    click.echo(res.to_json() if fmt == "json" else str(res))


# --- ingest / decompose ---
@main.command("ingest")
@click.argument("source")
@click.option("--db", required=True, help="LanceDB directory or URI (s3://..., gs://...) to write to.")
@click.option("--table", default="images", show_default=True, help="Images table name.")
@MODEL_OPTION
@PRETRAINED_OPTION
@click.option("--vocab", default="default", show_default=True,
              help="Concept vocabulary: 'default', 'demo', a SpLiCE list, a text file, or 'none' (embeddings only).")
@click.option("--l1", default=0.25, show_default=True, type=float, help="SpLiCE l1 penalty (larger = sparser).")
@click.option("--batch-size", default=64, show_default=True, type=int, help="Images per encoder batch and commit.")
@click.option("--workers", default=None, type=int, help="Decode processes (default: the CPU count, at most 8; 0 = inline).")
@click.option("--limit", default=None, type=int, help="Only the first N rows of the source.")
@click.option("--id-column", default=None, help="Manifest column with stable ids (default: 'id' if present, "
                                                 "else the SHA-256 of each file).")
@click.option("--uri-column", default=None, help="Manifest column with image paths (default: uri / path / ...).")
@click.option("--image-column", default=None, help="Binary column with image bytes (Lance table sources).")
@click.option("--template", "prompt_template", default=None, help="Prompt template for the concepts, e.g. 'a photo of {}'.")
@click.option("--image-mean", default=None, help="SpLiCE image mean (.npy); default: recorded, else estimated.")
@click.option("--retry-errors", is_flag=True, help="Re-attempt rows stored with status 'error'.")
@click.option("--new-concept-version", is_flag=True,
              help="Allow another vocabulary / l1 than the table's: re-decompose existing rows first.")
@click.option("--max-pixels", default=None, type=int, help="Decompression-bomb limit (default Pillow's, ~89.5 Mpx).")
@click.option("--fast-jpeg", "draft", is_flag=True, help="Decode large JPEGs at reduced DCT scale (faster, "
                                                         "embeddings differ slightly).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--rollup", "rollup_mode", type=click.Choice(["auto", "always", "never"]), default="auto",
              show_default=True, help="Rebuild the report aggregates at the end (auto: unless the table has over "
                                      "2M rows and this run changed under 5% of them).")
@click.option("--encoder-threads", default=None, type=click.IntRange(min=1),
              help="CPU threads for the encoder (default: one per core). 1 is faster when decoding is the "
                   "bottleneck (a tiny model on large photos).")
@_STORAGE_OPTION
@_ENGINE_OPTION
@_RAY_ADDRESS_OPTION
@_RAY_ACTORS_OPTION
@click.option("--ray-gpus-per-actor", type=float, default=None,
              help="With --engine ray: GPUs per actor (default 1 when the cluster has GPUs, else 0).")
@click.option("--commit-every", default=100_000, show_default=True, type=int,
              help="With --engine ray: rows per commit (a crash loses at most the wave in flight).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def ingest_cmd(source, db, table, model, pretrained, vocab, l1, batch_size, workers, limit, id_column, uri_column,
               image_column, prompt_template, image_mean, retry_errors, new_concept_version, max_pixels, draft, device,
               rollup_mode, encoder_threads, storage_options, engine, ray_address, ray_actors, ray_gpus_per_actor, commit_every,
               quiet, as_json):
    """Ingest images from SOURCE into a LanceDB table: embeddings, SpLiCE concepts, status.

    SOURCE is a directory (recursive), a manifest (.csv/.tsv/.parquet/.jsonl with a uri/path column
    relative to the manifest and any metadata columns), a Lance dataset directory, or DB::TABLE.
    Re-running skips what is already in the table. Bad images become rows with status 'error'.
    Exit status: 0 when any image was ingested or there was nothing new to do, 1 when every
    attempted image failed, 2 on unusable input (source, model, vocabulary, settings).

    --engine ray runs the same per-batch work on a Ray cluster (--ray-address auto, or
    ray://head:10001; default: a local Ray instance) with one model per actor, written with
    lance-ray (pip install 'lance-concepts[ray]'). s3:// databases take --storage-option KEY=VALUE
    (aws_endpoint, aws_region, allow_http, ...) or the AWS_* environment variables.
    """
    import json

    from .ingest import ingest as run_ingest

    summary = run_ingest(source, db, table=table, model=model, pretrained=pretrained,
                         vocab=None if str(vocab).lower() == "none" else vocab, l1=l1, batch_size=batch_size,
                         workers=workers, limit=limit, id_column=id_column, quiet=quiet, uri_column=uri_column,
                         image_column=image_column, storage_options=_storage_options(storage_options), device=device,
                         prompt_template=prompt_template, image_mean=image_mean, retry_errors=retry_errors,
                         new_concept_version=new_concept_version, max_pixels=max_pixels, draft=draft,
                         encoder_threads=encoder_threads,
                         rollup={"auto": "auto", "always": True, "never": False}[rollup_mode],
                         engine=engine, ray_address=ray_address, ray_actors=ray_actors,
                         ray_gpus_per_actor=ray_gpus_per_actor, commit_every=commit_every)
    click.echo(json.dumps(summary.to_dict(), default=str, indent=1) if as_json else str(summary))
    sys.exit(summary.exit_code)


@main.command("decompose")
@click.option("--db", required=True, help="LanceDB directory or URI.")
@click.option("--table", default="images", show_default=True)
@click.option("--vocab", required=True, help="Concept vocabulary: built-in name, SpLiCE list or text file.")
@click.option("--l1", default=0.25, show_default=True, type=float, help="SpLiCE l1 penalty.")
@click.option("--model", default=None, help="Override the recorded model name (its fingerprint must match).")
@click.option("--pretrained", default=None, help="With --model: its pretrained tag or weights file.")
@click.option("--template", "prompt_template", default=None, help="Prompt template for the concepts.")
@click.option("--image-mean", default=None, help="'estimate' (from all stored embeddings) or a .npy file; "
                                                 "default: the recorded mean.")
@_STORAGE_OPTION
@_ENGINE_OPTION
@_RAY_ADDRESS_OPTION
@_RAY_ACTORS_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
def decompose_cmd(db, table, vocab, l1, model, pretrained, prompt_template, image_mean, storage_options, engine,
                  ray_address, ray_actors, quiet):
    """Recompute the concept columns from the stored embeddings (new vocabulary or l1), no re-encoding.

    Writes a new concept-column version; earlier versions stay reachable as Lance table versions
    (listed under concept_history in the table metadata). --engine ray decomposes fragment by
    fragment on Ray actors and rewrites only the concept columns (not the embeddings), one commit.
    """
    from .ingest import decompose_table

    summary = decompose_table(db, vocab, l1, table=table, model=model, pretrained=pretrained,
                              prompt_template=prompt_template, image_mean=image_mean,
                              storage_options=_storage_options(storage_options), quiet=quiet, engine=engine,
                              ray_address=ray_address, ray_actors=ray_actors)
    click.echo(str(summary))


# --- SQL over the concept tables (lance_concepts.sql / lance_concepts.reports) ---

_FORMAT_OPTION = click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]),
                              default="table", show_default=True,
                              help="json: an array of records with snake_case keys; parquet needs --output.")
_OUTPUT_OPTION = click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
                              help="Write the result to this file instead of standard output.")
_DB_OPTION = click.option("--db", required=True, help="LanceDB directory or URI.")
_TABLE_OPTION = click.option("--table", default="images", show_default=True, help="Images table.")


def _emit(table, fmt, output, summary=None):
    from .reports import format_output

    text = format_output(table, fmt, output)
    if text is not None:
        click.echo(text)
    if summary and fmt == "table":
        click.echo("")
        click.echo(summary)
    elif output is not None:
        click.echo(f"wrote {table.num_rows} rows to {output}", err=True)


def _split_names(values):
    out = []
    for v in values or ():
        out += [s for s in (x.strip() for x in v.split(",")) if s] if "," in v and not v.startswith("=") else [v]
    return out


@main.command("sql")
@_DB_OPTION
@click.argument("query", required=False)
@click.option("--file", "file", default=None,
              help="A .sql file, or the name of a library query (concept_filter, concept_drift, ...).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Bind $NAME (repeatable); lists as a,b,c. Values are never pasted into the SQL text.")
@click.option("--materialize", is_flag=True, help="Copy the tables into DuckDB first (repeated heavy queries).")
@click.option("--list", "list_queries", is_flag=True, help="List the library queries and their parameters.")
@_TABLE_OPTION
@_STORAGE_OPTION
@_FORMAT_OPTION
@_OUTPUT_OPTION
def sql_cmd(db, query, file, params, materialize, list_queries, table, fmt, output, storage_options):
    """Run SQL over the tables: images, concepts, image_concepts (long: image_id, concept_id, concept,
    weight) and any other table of the database, with concept macros:

    \b
      SELECT uri FROM images WHERE concept_weight(images, 'desert') > 0.1
      SELECT * FROM concept_images('desert', 0.1)       -- fast, through the index
      SELECT uri, top_concepts(images, 5) FROM images LIMIT 10
    """
    from .sql import list_queries as _list, load_query, sql as run_sql

    if list_queries:
        for name in _list():
            q = load_query(name)
            ps = ", ".join([f"{p.name}" + ("" if p.required else f"={p.default}") for p in q.params.values()]
                           + [f"{p.name}={p.default} (column)" for p in q.idents.values()])
            first = q.doc.splitlines()[0] if q.doc else ""
            first = first[len(name) + 1:].strip() if first.startswith(name + ":") else first
            click.echo(f"{name}: {first}\n    params: {ps}")
        return
    bound = {}
    for p in params:
        if "=" not in p:
            raise click.BadParameter(f"expected NAME=VALUE, got {p!r}", param_hint="--param")
        k, v = p.split("=", 1)
        bound[k.strip()] = v
    result = run_sql(db, query, file=file, params=bound, materialize=materialize, table=table,
                     storage_options=_storage_options(storage_options))
    _emit(result, fmt, output)


@main.command("filter")
@_DB_OPTION
@click.option("--concept", "concepts", multiple=True, required=True, help="Concept name (repeatable).")
@click.option("--min", "min_weight", multiple=True, type=float, default=(0.1,), show_default=True,
              help="Weight must be above this; once for all concepts or once per --concept.")
@click.option("--any", "match_any", is_flag=True, help="OR: any concept passes (default AND: every concept).")
@click.option("--limit", type=int, default=None, help="At most this many images, strongest first.")
@click.option("--columns", default="uri", show_default=True, help="Image columns to show, comma-separated.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="PNG: weight histograms of the concepts with the thresholds.")
@_TABLE_OPTION
@_STORAGE_OPTION
@_FORMAT_OPTION
@_OUTPUT_OPTION
def filter_cmd(db, concepts, min_weight, match_any, limit, columns, plot, table, fmt, output, storage_options):
    """Images whose concept weights pass the thresholds (weight > --min), strongest first."""
    from .reports import filter as run_filter, plot_filter

    cols = [c.strip() for c in columns.split(",") if c.strip()]
    result = run_filter(db, list(concepts), list(min_weight), match="any" if match_any else "all", limit=limit,
                        columns=cols, table=table, storage_options=_storage_options(storage_options))
    _emit(result, fmt, output)
    if plot:
        plot_filter(db, list(concepts), list(min_weight), plot, table=table,
                    storage_options=_storage_options(storage_options))
        click.echo(f"plot: {plot}", err=True)


@main.command("drift")
@_DB_OPTION
@click.option("--time-column", default="timestamp", show_default=True, help="Timestamp/date column.")
@click.option("--every", type=click.Choice(["day", "week", "month", "quarter", "year"]), default="month",
              show_default=True)
@click.option("--concepts", "concepts", multiple=True, help="Concepts to show (repeatable or a,b,c).")
@click.option("--top", default=10, show_default=True, help="Without --concepts: the N most prevalent.")
@click.option("--reference", default=None, help="Reference window, e.g. 2024-01 (default: the first).")
@click.option("--min-weight", default=0.0, show_default=True, help="Present = weight above this.")
@click.option("--alpha", default=0.05, show_default=True, help="False discovery rate (Benjamini-Hochberg).")
@click.option("--min-change", default=0.10, show_default=True, help="Alert only for |prevalence change| >= this.")
@click.option("--min-support", default=10, show_default=True, help="Test concepts seen in at least N images.")
@click.option("--where", default=None, help="Extra SQL condition on images (your own SQL).")
@click.option("--weight-intervals", is_flag=True, help="Also 95% intervals of the mean weights (slower).")
@click.option("--materialize", is_flag=True, help="Copy the tables into DuckDB first.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="PNG: curves with 95% intervals.")
@_TABLE_OPTION
@_STORAGE_OPTION
@_FORMAT_OPTION
@_OUTPUT_OPTION
def drift_cmd(db, time_column, every, concepts, top, reference, min_weight, alpha, min_change, min_support, where,
              weight_intervals, materialize, plot, table, fmt, output, storage_options):
    """Concept prevalence (Wilson 95%) and mean weight per time window; change tests against the
    reference window with Benjamini-Hochberg control; alerts; rising and falling concepts; the
    Jensen-Shannon divergence of each window's concept distribution from the reference."""
    from .reports import drift

    res = drift(db, time_column, every, concepts=_split_names(concepts) or None, top=top, reference=reference,
                min_weight=min_weight, alpha=alpha, min_change=min_change, min_support=min_support, where=where,
                weight_intervals=weight_intervals or bool(plot), materialize=materialize, table=table,
                storage_options=_storage_options(storage_options))
    _emit(res.table, fmt, output, res.summary())
    if plot:
        res.plot(plot)
        click.echo(f"plot: {plot}", err=True)


@main.command("spurious")
@_DB_OPTION
@click.option("--label-column", default="label", show_default=True)
@click.option("--split-column", default=None, help="Also report per-label concept shifts between splits.")
@click.option("--split-reference", default=None, help="Split the others are compared with (default: largest).")
@click.option("--min-weight", default=0.0, show_default=True, help="Present = weight above this.")
@click.option("--min-support", default=5, show_default=True, help="Test (label, concept) pairs seen >= N times.")
@click.option("--min-lift", default=1.5, show_default=True)
@click.option("--alpha", default=0.05, show_default=True, help="False discovery rate (Benjamini-Hochberg).")
@click.option("--min-change", default=0.10, show_default=True, help="Split shift: smallest |change| reported.")
@click.option("--top", default=10, show_default=True, help="At most N concepts per label.")
@click.option("--label-match", type=click.Choice(["auto", "string", "embedding", "none"]), default="auto",
              show_default=True, help="How concepts that merely name the label are found and left out.")
@click.option("--label-threshold", default=None, type=float,
              help="Centred text-embedding cosine for --label-match embedding/auto (default 0.6).")
@click.option("--where", default=None, help="Extra SQL condition on images (your own SQL).")
@click.option("--materialize", is_flag=True, help="Copy the tables into DuckDB first.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="PNG: per-label concept bars.")
@_TABLE_OPTION
@_STORAGE_OPTION
@_FORMAT_OPTION
@_OUTPUT_OPTION
def spurious_cmd(db, label_column, split_column, split_reference, min_weight, min_support, min_lift, alpha,
                 min_change, top, label_match, label_threshold, where, materialize, plot, table, fmt, output,
                 storage_options):
    """Concepts over-represented in each label (lift, nPMI, one-sided test with Benjamini-Hochberg),
    leaving out concepts that merely name the label; with --split-column, per-label differences
    between splits."""
    from .reports import LABEL_MATCH_THRESHOLD, spurious

    res = spurious(db, label_column, split_column, min_weight=min_weight, min_support=min_support,
                   min_lift=min_lift, alpha=alpha, top=top, min_change=min_change, split_reference=split_reference,
                   label_match=label_match,
                   label_threshold=LABEL_MATCH_THRESHOLD if label_threshold is None else label_threshold,
                   where=where, materialize=materialize, table=table,
                   storage_options=_storage_options(storage_options))
    _emit(res.combined(), fmt, output, res.summary())
    if plot:
        res.plot(plot)
        click.echo(f"plot: {plot}", err=True)


@main.command("report")
@_DB_OPTION
@click.option("--html", "html", type=click.Path(dir_okay=False), required=True, help="HTML file to write.")
@click.option("--time-column", default="timestamp", show_default=True)
@click.option("--every", type=click.Choice(["day", "week", "month", "quarter", "year"]), default="month",
              show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--split-column", default=None)
@click.option("--top", default=8, show_default=True, help="Concepts per section / per label.")
@click.option("--min-weight", default=0.0, show_default=True)
@click.option("--label-match", type=click.Choice(["auto", "string", "embedding", "none"]), default="auto",
              show_default=True)
@click.option("--no-materialize", is_flag=True, help="Query Lance directly instead of copying into DuckDB once.")
@_STORAGE_OPTION
@_TABLE_OPTION
def report_cmd(db, html, time_column, every, label_column, split_column, top, min_weight, label_match,
               no_materialize, table, storage_options):
    """One self-contained HTML page: summary, drift and spurious-correlation sections with figures."""
    from .reports import report

    path = report(db, html, time_column=time_column, every=every, label_column=label_column,
                  split_column=split_column, top=top, min_weight=min_weight, label_match=label_match,
                  materialize=not no_materialize, table=table, storage_options=_storage_options(storage_options))
    click.echo(f"wrote {path}")


@main.command("search")
@_DB_OPTION
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
@_TABLE_OPTION
@_STORAGE_OPTION
@_FORMAT_OPTION
@_OUTPUT_OPTION
def search_cmd(db, query, image, where, k, without, with_, with_weight, vector_column, columns, n_concepts, nprobes,
               refine_factor, exact, table, fmt, output, storage_options):
    """Find images by meaning (QUERY text or --image), under a concept/metadata condition.

    The condition is a prefilter: k results come back whenever k images pass it, all of them when
    fewer do, none when none does. --without/--with edit the query (SpLiCE concept arithmetic).
    """
    import json

    import pyarrow as pa

    from .search import search as run_search

    cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    result = run_search(db, query, image=image, where=where, k=k, without=list(without), with_=list(with_),
                        with_weight=with_weight, table=table, vector_column=vector_column, columns=cols,
                        concepts=n_concepts, nprobes=nprobes, refine_factor=refine_factor, exact=exact,
                        storage_options=_storage_options(storage_options))
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
    _emit(result, fmt, output, summary=summary)


@main.command("index")
@_DB_OPTION
@_TABLE_OPTION
@click.option("--index-type", type=click.Choice(["auto", "IVF_PQ", "IVF_HNSW_SQ", "IVF_FLAT"], case_sensitive=False),
              default="auto", show_default=True,
              help="auto: exact IVF_FLAT below 5,000 rows, else IVF_PQ (parameters from the table size).")
@click.option("--column", default="embedding", show_default=True, help="Vector column to index.")
@click.option("--no-scalar", is_flag=True, help="Only the vector index, not the scalar indexes filters use.")
@click.option("--lancedb-search", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Record the table's model for plain lancedb `table.search(\"text\")` (writers must then "
                   "import lance_concepts); auto: when the project's writers support it.")
@_STORAGE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def index_cmd(db, table, index_type, column, no_scalar, lancedb_search, as_json, storage_options):
    """Build the vector index and the scalar indexes concept filters use (LABEL_LIST on concept_ids,
    BTREE/BITMAP on ids and metadata), and register the table's model for LanceDB text search."""
    import json

    from .search import index as run_index

    report = run_index(db, table, index_type=index_type, column=column, scalar=not no_scalar,
                       lancedb_search={"auto": "auto", "on": True, "off": False}[lancedb_search],
                       storage_options=_storage_options(storage_options))
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


@main.command("rollup")
@_DB_OPTION
@_TABLE_OPTION
@click.option("--column", "columns", multiple=True,
              help="Column to aggregate by (repeatable; default: every time column and every categorical column "
                   "with at most --max-groups values, plus their pairs).")
@click.option("--max-groups", default=1000, show_default=True,
              help="Most groups per dimension (time columns use a coarser window beyond it).")
@_STORAGE_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def rollup_cmd(db, table, columns, max_groups, storage_options, quiet, as_json):
    """Rebuild the per-day / per-label concept aggregates that `drift` and `spurious` read instead of
    every image's concept weights (ingest and decompose do this at the end; run it after other writes).

    Reports fall back to scanning the images table, with the same results, whenever the aggregates
    are missing or older than the table."""
    import dataclasses
    import json

    from .rollup import rollup

    summary = rollup(db, table, list(columns) or None, max_groups=max_groups,
                     storage_options=_storage_options(storage_options), quiet=quiet)
    click.echo(json.dumps(dataclasses.asdict(summary), indent=1) if as_json else summary.text())


@main.command("edit")
@_DB_OPTION
@click.option("--remove-concept", "remove", multiple=True, required=True, help="Concept to remove (repeatable).")
@click.option("--into", required=True, help="New vector column for the edited embeddings.")
@click.option("--labels-column", "labels", multiple=True,
              help="Label column to report zero-shot accuracy on, before and after (repeatable).")
@click.option("--prompts", multiple=True,
              help="Prompt template with {} for the label, e.g. 'a photo of a {}' (all label columns), or "
                   "COLUMN=TEMPLATE for one. Default: 'a photo of a {}'.")
@click.option("--overwrite", is_flag=True, help="Replace the column if it exists.")
@_TABLE_OPTION
@_STORAGE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def edit_cmd(db, remove, into, labels, prompts, overwrite, table, as_json, storage_options):
    """Remove concepts from every embedding (SpLiCE model editing) into a new vector column, and
    report zero-shot accuracy per label column before and after."""
    import json
    import re

    from .errors import InputError
    from .search import edit as run_edit

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
                      overwrite=overwrite, storage_options=_storage_options(storage_options))
    click.echo(json.dumps(report.to_dict(), indent=1) if as_json else str(report))


if __name__ == "__main__":  # pragma: no cover
    main()
