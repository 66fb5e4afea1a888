"""Stage augment@<build>: write one recipe's augmented images of one dataset as Parquet shards."""

from pathlib import Path

import numpy as np

from auglab import augment, cli, params, plots, shards
from auglab.files import atomic_dir


def main(args) -> None:
    recipe = params.load_key(args.params, f"augment.recipes.{args.recipe}")
    source = shards.read_split(args.splits, recipe.source)
    class_names = shards.read_manifest(args.splits)["class_names"]
    views = [view.ops() for view in recipe.views.values()]
    firsts = [int(np.flatnonzero(source.labels == c)[0]) for c in np.unique(source.labels)]
    samples = augment.Samples(rows=firsts, per_row=min(8, recipe.copies * len(views)))
    with atomic_dir(args.out) as staging:
        info = augment.write_recipe(staging, source, args.recipe, views, recipe.copies, recipe.balance,
                                    recipe.originals, recipe.seed, samples)
        shards.write_manifest(staging, {args.recipe: info}, dataset=source.metadata["dataset"],
                              recipe=args.recipe, source=recipe.source, class_names=class_names,
                              views={name: view.ops() for name, view in recipe.views.items()})
    title = f"{source.metadata['dataset']} / {args.recipe}: original, then augmented views"
    plots.sample_grid(args.grid, source.images, source.labels, samples.rows, samples.views, samples.per_row, title,
                      class_names)  # atomic: no stray temp file
    cli.log(f"{args.recipe}: {info.rows} rows, per class {info.class_counts}")


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--recipe", required=True, help="a key of augment.recipes")
    parser.add_argument("--splits", type=Path, required=True, help="shard directory (split stage)")
    parser.add_argument("--out", type=Path, required=True, help="shard directory to write")
    parser.add_argument("--grid", type=Path, required=True, help="sample grid PNG to write")
    cli.run(main, parser)
