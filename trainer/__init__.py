"""`edgefleet-retrain`: the trainer a retraining Job runs (EdgeModel spec.retraining)."""
