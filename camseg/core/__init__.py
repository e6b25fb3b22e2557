"""The floor everything stands on: errors, progress and cancellation, settings, the Dice
metric, array types and windowing.
"""
