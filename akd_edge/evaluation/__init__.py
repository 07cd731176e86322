"""Evaluation: the streaming engine (``engine``), a checkpoint's ``eval.json`` (``report``) and the
training-dynamics report (``dynamics``). Import the submodule you need; nothing is imported here."""
