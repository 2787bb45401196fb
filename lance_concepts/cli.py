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
    what the concept queries find next to the planted truth.
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


if __name__ == "__main__":  # pragma: no cover
    main()
