"""Offline model work: training, evaluation, calibration and export.

Run as commands (``python -m models.training.train_style``, ...). The service (``app/``, ``worker/``)
never imports this package: what it loads lives one level up in :mod:`models`.
"""
