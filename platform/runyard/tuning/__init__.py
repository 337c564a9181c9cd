"""Hyperparameter search: Ray Tune + Optuna + schedulers, one MLflow parent run per search."""
