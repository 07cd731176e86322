"""Evaluation: the streaming engine (``engine``) that training, eval and compress all call; ``akd-edge eval``,
a checkpoint's ``eval.json`` (``command``); its sanity checks (``checks``) and plots (``plots``); the
training-dynamics report (``dynamics``) and the teacher-student gap (``teacher_gap``). Import the submodule
you need; nothing is imported here."""
