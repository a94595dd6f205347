"""Experiment scripts: run, ablation, plot, pretrain (``python -m experiments.run ...``)."""
