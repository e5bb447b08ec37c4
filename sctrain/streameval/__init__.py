"""Keyword spotting on long audio streams: build test streams with known words (TensorFlow's
``generate_streaming_test_wav`` protocol), score the model's windows once, replay the detector's decisions
(:class:`sctrain.inference.events.EventDecoder`) for many thresholds, and report hits, misses and false alarms per
hour, a DET curve and per-keyword thresholds calibrated for a target false-alarm rate.

Modules: ``stream`` (building), ``posteriors`` (the model, once per stream), ``scoring`` (matching to the
truth), ``det``, ``calibrate``, ``evaluate`` (all three on cached runs), ``report`` (JSON, PNG, markdown),
``data`` (clips and noise of a packed split) and ``cli`` (``python -m sctrain.streameval``).
"""
from sctrain.streameval.calibrate import Calibration, calibrate
from sctrain.streameval.evaluate import Evaluation, evaluate
from sctrain.streameval.mixed_stream import Stream, Word, build_stream
from sctrain.streameval.scoring import Score, score_events
from sctrain.streameval.sweep import DetPoint, det_curve, sweep_scores

__all__ = ["Calibration", "DetPoint", "Evaluation", "Score", "Stream", "Word", "build_stream", "calibrate",
           "det_curve", "evaluate", "score_events", "sweep_scores"]
