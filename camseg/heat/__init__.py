"""Heatmaps and what becomes of them: the CAM methods, thresholding into masks, refinement, the overlay picture."""
