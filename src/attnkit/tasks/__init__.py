"""Tasks: a dataset, an objective and metrics that the trainer runs a model on."""
