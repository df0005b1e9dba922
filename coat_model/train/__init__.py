"""Training: the command line (``python -m coat_model.train``, ``cli.py``), the trainer and its step, the losses,
the pair builder, the data (procedural faces, image folders, warps), counter-based random streams, the run folder
and the training-state file.

This file imports nothing, so that ``coat_model.train.pairs`` or ``coat_model.train.data`` can be imported without
the trainer.
"""
