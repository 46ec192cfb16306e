"""`edgefleet-retrain`: what a retraining Job runs. The operator sets EDGEFLEET_DATASET,
EDGEFLEET_OUTPUT, EDGEFLEET_MODEL and EDGEFLEET_BASE_VERSION in the Job's environment
(and EDGEFLEET_S3_ENDPOINT, EDGEFLEET_S3_REGION for a dataset on S3); flags override
them. Exit status 2 for bad configuration or a dataset that cannot train a model."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import version
from pathlib import Path


def parse(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="edgefleet-retrain",
        description="Train a new version of a classifier on the labelled samples devices "
                    "sent back, and write model.onnx, model.sha256 and evaluation.json.")
    parser.add_argument("--version", action="version",
                        version=f"edgefleet-retrain {version('edgefleet')}")
    parser.add_argument("--dataset", default=env("EDGEFLEET_DATASET"),
                        help="the model's samples: a directory or s3://BUCKET/PREFIX/ "
                             "(env EDGEFLEET_DATASET)")
    parser.add_argument("--output", default=env("EDGEFLEET_OUTPUT"),
                        help="where to write the model and its evaluation: a directory or "
                             "s3://BUCKET/PREFIX/ (env EDGEFLEET_OUTPUT)")
    parser.add_argument("--s3-endpoint", default=env("EDGEFLEET_S3_ENDPOINT", ""),
                        help="the S3 API's URL for a store other than AWS "
                             "(env EDGEFLEET_S3_ENDPOINT)")
    parser.add_argument("--s3-region", default=env("EDGEFLEET_S3_REGION") or "us-east-1",
                        help="(env EDGEFLEET_S3_REGION)")
    parser.add_argument("--base-data", type=Path,
                        help="the base version's training data: .npz with `inputs` (or "
                             "`pixels`) and `labels`, trained on with the field's rows")
    parser.add_argument("--hidden-units", type=int, default=128)
    parser.add_argument("--holdout", type=float, default=0.25,
                        help="share of the labelled field rows held out to score on")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for flag, value in (("--dataset", args.dataset), ("--output", args.output)):
        if not value:
            parser.error(f"{flag} (or its environment variable) is required")
    if not 0 < args.holdout < 1:
        parser.error("--holdout must be between 0 and 1")
    if args.hidden_units < 1:
        parser.error("--hidden-units must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import numpy as np

    from edgefleet.operator.dataset import DatasetError, open_store
    from edgefleet.trainer.retrain import TrainingError, read_field_data, train, write_output

    log = logging.getLogger("edgefleet.retrain")
    try:
        base_inputs = base_labels = None
        if args.base_data:
            with np.load(args.base_data, allow_pickle=False) as base:
                base_inputs = base["inputs"] if "inputs" in base else base["pixels"]
                base_labels = base["labels"]
        dataset = open_store(args.dataset, args.s3_endpoint, args.s3_region)
        field = read_field_data(dataset)
        log.info("read %d samples from %s: %d labelled rows; %d samples without a label, "
                 "%d labels without a kept sample or a class index, %d malformed entries",
                 field.samples, dataset.describe(), len(field.labels), field.unlabelled,
                 field.skipped_labels, field.malformed)
        trained = train(field, base_inputs, base_labels, args.hidden_units, args.holdout,
                        args.seed)
        output = open_store(args.output, args.s3_endpoint, args.s3_region)
        digest = write_output(output, trained)
    except (TrainingError, DatasetError, OSError, KeyError, ValueError) as error:
        print(f"edgefleet-retrain: {error}", file=sys.stderr)
        sys.exit(2)
    log.info("wrote sha256:%s to %s: accuracy %.4f on %d held-out rows (the serving "
             "version: %.4f)", digest, output.describe(), trained.accuracy, trained.held_out,
             trained.base_accuracy)


if __name__ == "__main__":
    main()
