"""Bulk work on folders and series: the job store and its job kinds, series and folder segmentation."""
