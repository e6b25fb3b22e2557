"""Studies of the method: Dice evaluation, where heatmaps sit, filtered retraining,
distillation, recipe search, real cases, and their figures.
"""
