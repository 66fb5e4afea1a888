"""Stage report: reports/report.md with every study's table beside the study's own numbers,
GAN quality, the augmentation sanity check, timing and figures; reports/metrics.json holds the
headline numbers `dvc metrics diff` shows. What it shows is report.yaml; auglab/report.py builds it."""

from pathlib import Path

from auglab import cli, params, report
from auglab.files import atomic_dir, temp_path, write_json_atomic

INPUTS = {"splits": "data/split", "augmented": "data/augmented", "models": "artifacts/models",
          "eval": "artifacts/eval", "metrics": "artifacts/metrics", "confusion": "artifacts/confusion",
          "gan": "artifacts/gan", "sweeps": "artifacts/sweeps", "tune": "artifacts/tune",
          "ensembles": "artifacts/ensembles"}
OUTPUTS = {"figures": "reports/figures", "report": "reports/report.md", "headline": "reports/metrics.json"}


def main(args) -> None:
    config = params.load_report(args.report_params)
    builds = params.load_key(args.params, "augment.builds")
    gan_builds = params.load_key(args.params, "gan.score.builds")
    sweeps = params.load_key(args.params, "sweeps")
    inputs = report.Inputs(**{name: getattr(args, name) for name in INPUTS})
    with atomic_dir(args.figures) as figures:
        lines, numbers = report.build(inputs, config, builds, gan_builds, sweeps, figures)
        markdown = temp_path(args.report)
        markdown.write_text("\n".join(lines))
    markdown.replace(args.report)
    write_json_atomic(args.headline, numbers)
    cli.log(f"report: {args.report} with {len(numbers['studies'])} study tables, {len(numbers['gan'])} GAN builds, "
            f"{len(numbers['sanity'])} sanity rows")


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--report-params", type=Path, required=True, help="report.yaml: what the report shows")
    for name, help_text in INPUTS.items():
        parser.add_argument(f"--{name}", type=Path, required=True, help=help_text)
    for name, help_text in OUTPUTS.items():
        parser.add_argument(f"--{name}", type=Path, required=True, help=f"{help_text} (written)")
    cli.run(main, parser)
