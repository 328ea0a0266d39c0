"""Turning a trained model into predictions (shared by evaluation, the CLI and the service)."""

from vestis.inference.batch import predict_loader, probabilities

__all__ = ["predict_loader", "probabilities"]
