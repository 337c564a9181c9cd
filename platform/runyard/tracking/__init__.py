"""MLflow: run lifecycle, rank-zero epoch logging, lineage tags and the model registry."""
