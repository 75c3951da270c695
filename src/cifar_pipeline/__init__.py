"""CIFAR-10 experiment pipeline: data, models, training engine, metrics and MLflow tracking."""
