"""The training engine both model families share (the 4D-LLM in :mod:`psg4d.train`, the pipeline
baseline in :mod:`psg4d.baseline`): the fit loop (:mod:`.fit`), stage folders and checkpoints
(:mod:`.stage_dir`, :mod:`.checkpoint`), the run-folder settings check (:mod:`.run_folder`),
optimizer and schedule tables (:mod:`.optim`), ``metrics.jsonl`` (:mod:`.metrics`) and rank gating
(:mod:`.distributed`)."""
