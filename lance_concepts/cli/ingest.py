"""``lance-concepts ingest``, ``decompose`` and ``rollup``: the commands that write tables.
"""
from __future__ import annotations

import sys

import click

from .group import main
from .options import (
    DB_OPTION,
    ENGINE_OPTION,
    RAY_ACTORS_OPTION,
    RAY_ADDRESS_OPTION,
    STORAGE_OPTION,
    TABLE_OPTION,
    parse_storage_options,
)


# --- ingest / decompose ---
@main.command("ingest")
@click.argument("source")
@click.option("--db", required=True, help="LanceDB directory or URI (s3://..., gs://...) to write to.")
@click.option("--table", default="images", show_default=True, help="Images table name.")
@click.option("--model", default=None, help="open_clip architecture, or 'demo' for the offline demo model "
              "(default: the table's, else ViT-B-32).")
@click.option("--pretrained", default=None, help="open_clip pretrained tag or a local weights file (default: the "
              "table's, else laion2b_s34b_b79k for ViT-B-32).")
@click.option("--vocab", default="auto",
              help="Concept vocabulary: 'default', 'demo', a SpLiCE list, a text file, or 'none' (embeddings only); "
              "default: the table's, else 'default'.")
@click.option("--l1", default=None, type=float, help="SpLiCE l1 penalty (larger = sparser; default: the table's, "
              "else 0.25).")
@click.option("--label-from-folder/--no-label-from-folder", default=True, show_default=True,
              help="Folder sources: record the parent folder as 'label' (ImageFolder convention; a top folder "
              "train/val/test as 'split').")
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
@STORAGE_OPTION
@ENGINE_OPTION
@RAY_ADDRESS_OPTION
@RAY_ACTORS_OPTION
@click.option("--ray-gpus-per-actor", type=float, default=None,
              help="With --engine ray: GPUs per actor (default 1 when the cluster has GPUs, else 0).")
@click.option("--commit-every", default=100_000, show_default=True, type=int,
              help="With --engine ray: rows per commit (a crash loses at most the wave in flight).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def ingest_cmd(source, db, table, model, pretrained, vocab, l1, label_from_folder, batch_size, workers, limit, id_column, uri_column,
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

    from ..lake.ingest import ingest as run_ingest

    try:
        summary = run_ingest(source, db, table=table, model=model, pretrained=pretrained,
                             vocab=None if str(vocab).lower() == "none" else vocab, l1=l1, batch_size=batch_size,
                             workers=workers, limit=limit, id_column=id_column, quiet=quiet, uri_column=uri_column,
                             image_column=image_column, storage_options=parse_storage_options(storage_options), device=device,
                             prompt_template=prompt_template, image_mean=image_mean, retry_errors=retry_errors,
                             new_concept_version=new_concept_version, max_pixels=max_pixels, draft=draft,
                             encoder_threads=encoder_threads,
                             rollup={"auto": "auto", "always": True, "never": False}[rollup_mode],
                             engine=engine, ray_address=ray_address, ray_actors=ray_actors,
                             ray_gpus_per_actor=ray_gpus_per_actor, commit_every=commit_every,
                             label_from="parent" if label_from_folder else None)
    except KeyboardInterrupt:
        click.echo("interrupted: the rows committed so far are kept; run the same command again to finish", err=True)
        sys.exit(130)
    click.echo(json.dumps(summary.to_dict(), default=str, indent=1) if as_json else str(summary))
    sys.exit(summary.exit_code)


@main.command("decompose")
@click.option("--db", required=True, help="LanceDB directory or URI.")
@click.option("--table", default="images", show_default=True)
@click.option("--vocab", required=True, help="Concept vocabulary: built-in name, SpLiCE list or text file.")
@click.option("--l1", default=0.25, show_default=True, type=float, help="SpLiCE l1 penalty.")
@click.option("--target-l0", type=click.IntRange(min=1), default=None,
              help="Instead of --l1: the l1 giving a median of N concepts per image on a sample of the table.")
@click.option("--model", default=None, help="Override the recorded model name (its fingerprint must match).")
@click.option("--pretrained", default=None, help="With --model: its pretrained tag or weights file.")
@click.option("--template", "prompt_template", default=None, help="Prompt template for the concepts.")
@click.option("--image-mean", default=None, help="'estimate' (from all stored embeddings) or a .npy file; "
                                                 "default: the recorded mean.")
@STORAGE_OPTION
@ENGINE_OPTION
@RAY_ADDRESS_OPTION
@RAY_ACTORS_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
def decompose_cmd(db, table, vocab, l1, target_l0, model, pretrained, prompt_template, image_mean, storage_options, engine,
                  ray_address, ray_actors, quiet):
    """Recompute the concept columns from the stored embeddings (new vocabulary or l1), no re-encoding.

    Writes a new concept-column version; earlier versions stay reachable as Lance table versions
    (listed under concept_history in the table metadata). --engine ray decomposes fragment by
    fragment on Ray actors and rewrites only the concept columns (not the embeddings), one commit.
    """
    from ..lake.decompose import decompose_table

    summary = decompose_table(db, vocab, l1, table=table, model=model, pretrained=pretrained,
                              prompt_template=prompt_template, image_mean=image_mean,
                              storage_options=parse_storage_options(storage_options), quiet=quiet, engine=engine,
                              ray_address=ray_address, ray_actors=ray_actors, target_l0=target_l0)
    click.echo(str(summary))


@main.command("rollup")
@DB_OPTION
@TABLE_OPTION
@click.option("--column", "columns", multiple=True,
              help="Column to aggregate by (repeatable; default: every time column and every categorical column "
                   "with at most --max-groups values, plus their pairs).")
@click.option("--max-groups", default=1000, show_default=True,
              help="Most groups per dimension (time columns use a coarser window beyond it).")
@STORAGE_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def rollup_cmd(db, table, columns, max_groups, storage_options, quiet, as_json):
    """Rebuild the per-day / per-label concept aggregates that `drift` and `spurious` read instead of
    every image's concept weights (ingest and decompose do this at the end; run it after other writes).

    Reports fall back to scanning the images table, with the same results, whenever the aggregates
    are missing or older than the table."""
    import dataclasses
    import json

    from ..lake.rollup import rollup

    summary = rollup(db, table, list(columns) or None, max_groups=max_groups,
                     storage_options=parse_storage_options(storage_options), quiet=quiet)
    click.echo(json.dumps(dataclasses.asdict(summary), indent=1) if as_json else summary.text())
