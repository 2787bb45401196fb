"""``lance-concepts vocab``: show, build and embed concept vocabularies.
"""
from __future__ import annotations

import click

from .group import main
from .options import MODEL_OPTION, PRETRAINED_OPTION


@main.group()
def vocab():
    """Concept vocabularies: inspect, build from captions, pre-compute embeddings."""


@vocab.command("show")
@click.argument("spec", default="default")
@click.option("--limit", default=20, show_default=True, help="How many concepts to list.")
def vocab_show(spec, limit):
    """Describe a vocabulary: a built-in ('default', 'demo'), a SpLiCE list ('splice-laion-10k',
    'splice-laion-bigrams', 'splice-mscoco', downloaded once and cached) or a text file."""
    from ..concepts.vocabulary import load_vocabulary

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
    from ..concepts.vocabulary import build_vocabulary

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
    from ..concepts.vocabulary import load_vocabulary
    from ..models.encoder import load_encoder

    v = load_vocabulary(spec)
    enc = load_encoder(model, pretrained)
    emb = v.embed(enc, template=template)
    click.echo(f"{len(v)} concepts x {emb.shape[1]} dims cached for model {enc.fingerprint} (vocabulary {v.digest})")
