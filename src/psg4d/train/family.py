"""The 4D-LLM's training as a model family of :mod:`psg4d.families`: an experiment YAML (no
``kind``, or ``kind: psg4d_llm``) through its stages (:func:`psg4d.train.loop.train`)."""

from __future__ import annotations

from psg4d.families import StageLine, TrainReport, TrainRequest


def train(request: TrainRequest) -> TrainReport:
    from psg4d.train.loop import train as train_stages
    from psg4d.train.stages import load_experiment

    cfg = load_experiment(request.config, request.overrides)
    result = train_stages(cfg, out_dir=request.out, resume=request.resume, only_stage=request.stage)
    lines = [StageLine(name=st.name, skipped=st.skipped, work=f"{st.steps} steps", wall_s=st.wall_s,
                       final_loss=st.final_loss, val=dict(st.val)) for st in result.stages]
    return TrainReport(stages=lines, final_dir=result.final_dir)
