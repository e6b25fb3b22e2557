"""The pipeline a request runs: its options, the saved student and recipe, a loaded model
and :func:`~camseg.pipeline.run.run`, and its outputs.
"""
