"""Running a training job: the process group and every collective the recipes run (`distributed`), the data
loader (`loader`), the optimizer and schedule (`optimizer`), one optimizer step (`step`) with the loss on target
positions only (`target_loss`), per-step statistics and metrics (`run_log`), checkpoints (`checkpoint`) and their
verified completion marker (`checkpoint_marker`), what a run is (`run_identity`), one run per output_dir
(`run_lock`), the run directory's files (`run_dir`), run_summary.json (`run_summary`), SIGTERM/SIGINT
(`preemption`), a rank that stops answering (`stall`) and DeepSpeed's compiled ops (`deepspeed_ops`)."""
