"""``lance-concepts falcon``: name the features of a representation stored in a table.
"""
from __future__ import annotations

import click

from .group import main
from .options import STORAGE_OPTION, parse_storage_options


# --- falcon (feature labels) ---
def falcon_explainer_options(f):
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
@falcon_explainer_options
@click.option("--no-write", is_flag=True, help="Print only; do not write the features tables.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--max-ids", default=50, show_default=True, help="Image ids listed per group in the output.")
@STORAGE_OPTION
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
    from ..concepts.gradcam import default_transform, load_target_model
    from ..errors import InputError
    from ..lake.features import falcon

    encoder = None
    if clip_model:
        from ..models.encoder import load_encoder

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
                 temperature=temperature, storage_options=parse_storage_options(storage_options))
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
@STORAGE_OPTION
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def falcon_transfer_cmd(db, table, from_column, to_column, alpha, test_fraction, min_weight, interpretable_only,
                        no_write, fmt, storage_options):
    """Carry FALCON labels from --from-column to --to-column through a ridge map."""
    from ..lake.features import transfer

    res = transfer(db, from_column, to_column, table=table, alpha=alpha, test_fraction=test_fraction,
                   min_weight=min_weight, interpretable_only=interpretable_only, write=not no_write,
                   storage_options=parse_storage_options(storage_options))
    click.echo(res.to_json() if fmt == "json" else str(res))
