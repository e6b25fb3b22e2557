"""Studies of the method: Dice evaluation, its floor and ceiling (``bounds``), whole-image
metrics, where heatmaps sit, filtered retraining, distillation, recipe search, real cases,
and their figures.
"""
