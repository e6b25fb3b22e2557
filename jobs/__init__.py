"""Celery workers on Redis: bulk segmentation, Dice evaluation and scheduled filtered
retraining, adapting the core library (``camseg``) as ``services/`` does for gRPC."""
