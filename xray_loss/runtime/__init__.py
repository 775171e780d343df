"""What keeps runs going and findable, apart from the science: a reader of the heads, data and
metrics can skip this package.

``record`` (metrics.json: statuses, why training stopped, attempts), ``resume`` (what a run
continues from), ``checkpointing`` (atomic checkpoints, last/resume/preemption checkpoints),
``rundirs`` (run and sweep directories, their locks, TensorBoard URLs), ``sweep`` (Hydra's sweep
bookkeeping), ``ddp`` (DDP ranks under Hydra, CPU threads), ``slurm`` (requeue and restart
counts), ``optuna_search`` (the Optuna sweeper and its pruning hook: the optuna extra).
"""
