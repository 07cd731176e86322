"""Training: one loop for every objective, resumable at any batch.

``loop`` steps, logs and saves (:func:`~akd_edge.train.loop.train_run`, :class:`~akd_edge.train.loop.Trainer`);
what it stands on, each resolved once and handed down: ``parts`` (data, student, teachers, optimiser, attack),
``order`` (each epoch's image order), ``rng`` (the run's own random stream), ``state`` (what a resume restores),
``task`` (the speed plan and the objective built on it), ``records`` (metrics.jsonl, dynamics, summary.json),
``validate`` (the early-stopping check), ``stops`` (Ctrl-C, divergence), ``rundir`` (the run's folder),
``parallel`` (DDP, SyncBatchNorm and rank seeds under torchrun), ``schedule`` and ``accel``. Import the submodule you need; nothing is imported here, so ``import akd_edge``
does not load torch.
"""
