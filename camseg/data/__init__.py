"""Data: the synthetic ROI generator, the folder layout, volumes and real test cases."""

from camseg.data.folder import CLASSES, FolderDataset, Record, Sample, decode_image, write_dataset

__all__ = ["CLASSES", "FolderDataset", "Record", "Sample", "decode_image", "write_dataset"]
