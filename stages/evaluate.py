"""Stage evaluate@<experiment>: score a trained model on its dataset's test split. Writes the
metrics reviewers diff, the confusion rows DVC plots, predictions as Parquet, a gallery of
misclassified images, and, where the test split is unlabelled (Kaggle's test.csv), submission.csv."""

from pathlib import Path

from auglab import checkpoint, cli, evaluate, plots, runtime, shards
from auglab.files import atomic_dir, write_bytes_atomic, write_json_atomic


def main(args) -> None:
    device = runtime.setup("auto")
    model, saved = checkpoint.load_model(args.model, device)
    class_names = saved["class_names"]
    test = shards.read_split(args.splits, "test")
    data_classes = shards.read_manifest(args.splits)["class_names"]
    evaluate.check_model(args.model, saved, data_classes, *test.images.shape[1:], args.splits)
    scored = test if test.labels is not None else shards.read_split(args.splits, "val")
    evaluate.check_labels(scored.labels, len(class_names), f"{args.splits}/{scored.metadata['split']}")
    found = evaluate.predict(model, scored.images, scored.labels, saved["mean"], saved["std"])
    result = {"split": scored.metadata["split"], "images": len(scored),
              **evaluate.metrics(scored.labels, found.predicted, found.loss, class_names)}
    for path in (args.metrics, args.confusion):
        path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(args.out) as staging:
        evaluate.write_predictions(staging / "predictions.parquet", scored.ids, scored.labels, found, class_names)
        shown = plots.gallery(staging / "misclassified.png", scored.images, scored.labels, found.predicted,
                                 class_names, f"{args.experiment}: misclassified {scored.metadata['split']} images "
                                 f"(true -> predicted), {result['errors']} of {len(scored):,}")
        if test.labels is None:  # Kaggle: predict the unlabelled test rows too
            unlabelled = evaluate.predict(model, test.images, None, saved["mean"], saved["std"])
            write_bytes_atomic(staging / "submission.csv", evaluate.submission(unlabelled.predicted))
        write_bytes_atomic(args.confusion, evaluate.confusion_rows(scored.labels, found.predicted, class_names))
        write_json_atomic(args.metrics, result)
    cli.log(f"{args.experiment}: {scored.metadata['split']} accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}, "
            f"macro F1 {result['f1']:.4f}; {shown} misclassified images in the gallery")


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--experiment", required=True, help="the experiment's name (for titles)")
    parser.add_argument("--model", type=Path, required=True, help="model.pt of the train stage")
    parser.add_argument("--splits", type=Path, required=True, help="the dataset's split directory")
    parser.add_argument("--out", type=Path, required=True, help="directory for predictions, gallery, submission")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--confusion", type=Path, required=True, help="confusion rows CSV to write")
    cli.run(main, parser)
