"""Experiments: commands that measure something and write ``OUT/NAME.json`` (+ a plot).

``OUT`` is ``runs/experiments/NAME`` unless ``--out`` says otherwise; the results BENCHMARKS.md
cites live in ``bench/results`` and are replaced only by an explicit ``--out bench/results`` of a
full run (a ``--quick`` run never replaces a full run's results: :func:`~psg4d.experiments.output.check_output_folder`).

``psg4d experiment NAME`` (:mod:`psg4d.experiments.commands`, one command per experiment): each
experiment module has a typed config with a ``quick`` mode that the test suite runs, and a
``run(config) -> dict``. BENCHMARKS.md quotes each result with its command, machine and date.
What the experiments share (their synthetic worlds, training runs, predicting and scoring under both
protocols) is public in :mod:`~psg4d.experiments.common`; an experiment uses another's public
functions only.

* ``predict`` (:mod:`~psg4d.experiments.predict_speed`): prediction time, cached against uncached
  candidate scoring, by thread count, idle and contended; peak memory on a long video.
* ``transfer`` (:mod:`~psg4d.experiments.transfer`): the 2D-to-4D transfer against 4D-only
  training at scarce 4D sizes, RGB-D and RGB-only input, held-out recall, feature similarity.
* ``long_video`` (:mod:`~psg4d.experiments.long_video`): ``psg4d predict``'s streaming path with the
  trained model on 100 to 10,000-frame videos: source frames/s and peak RSS per length.
* ``chain`` (:mod:`~psg4d.experiments.chain`): chained against direct inference with the tiny and
  the pretrained SmolLM2 LLM: recall, zero-shot recall on categories no training data showed,
  recall on categories only 2D images showed, and the label mapper's accuracy.
* ``naming`` (:mod:`~psg4d.experiments.naming`): held-out categories named from their
  descriptions alone by the LLM's language knowledge, over the whole vocabulary (no training).
* ``colour_reading`` (:mod:`~psg4d.experiments.colour_reading`): a design experiment on a design
  world's validation videos: the attribute head's colour read under true and predicted-like tubes,
  summed or against the ring around the tube, at two training budgets (chose the defaults).
* ``form_reading`` (:mod:`~psg4d.experiments.form_reading`): a design experiment on a design world's
  validation videos: size and shape measured from a tube's depth by the form reader, by snapping
  threshold, width and learning rate (chose the defaults of ``model.attribute_form: geometry``).
* ``compare`` (:mod:`~psg4d.experiments.compare`): the PSG4DFormer pipeline baseline (and its
  no-depth / no-temporal ablations) against the 4D-LLM with and without the transfer, on the HOI and
  GTA worlds: recall, mean tube vIoU, panoptic quality, training and prediction time.
* ``reading`` (:mod:`~psg4d.experiments.reading`): whether the 4D-LLM reads the video and the order
  of its frames (grounding, the reversal probe, recall with the ranking chosen on validation): plain,
  with frame tokens and reversed training clips, and with region feedback, 3 seeds on a world never
  used for design.
"""
