"""Training: from a config to a prepared run (`build`), the loop (`engine.fit`), its steps, evaluation and
checkpoints (`run_state`, `manifest`), what a run writes for people (`run_log`, `trackers`), and what keeps it
alive (`preemption`, `run_lock`, `allocator`)."""
