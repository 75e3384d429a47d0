"""ranksweep's Hydra Sweeper plugin: ``hydra/sweeper=ranksweep``.

Importing this package is cheap (Hydra imports every plugin at start-up):
Optuna, torch and the sweep logic are imported only when a sweep starts.
"""
