"""The gRPC service: a thin adapter from ``camseg.v1.Segmentation`` to the core library."""
