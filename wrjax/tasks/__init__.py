"""Task modules: one per benchmark task (data, model, objective, optimiser pieces).

* ``wrjax.tasks.shapes``: the 2D shape area task (presets ``squares2d`` and ``dsprites``).
"""
