"""The stateful streaming model (sctrain.inference.stateful): one hop and the state in, logits and the new state
out, equal to the windowed model on the same audio at every hop of a real stream, in PyTorch and ONNX Runtime,
with the same detections through StreamingDetector; checkpoints that cannot stream fail in one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sctrain.artifacts.best import save_best
from sctrain.audio.constants import SAMPLE_RATE
from sctrain.audio.features import LogMel
from sctrain.audio.io import read_audio
from sctrain.cli import export as export_cli
from sctrain.config import ConfigError, load_config
from sctrain.inference import stateful, stateful_export
from sctrain.inference.export import softmax
from sctrain.inference.loading import LoadedModel, load_model
from sctrain.inference.streaming import StreamingDetector
from sctrain.models.classifier import AudioClassifier
from sctrain.models.registry import create_model, get_family, list_models

FAMILIES = list(stateful.STREAMING_FAMILIES)
LABELS = ["yes", "no", "up", "down", "_silence_"]
STREAMABLE = ["features.center=false", "features.normalise=none"]


def stream_overrides(family: str) -> list[str]:
    """A tiny streamable network of ``family`` on its paper's front end."""
    fam = get_family(family)
    return [f"model.name={family}", f"model.{family}.time_padding=valid", *STREAMABLE,
            *(f"features.{k}={v}" for k, v in fam.features.items()),
            *(f"model.{family}.{k}={v}" for k, v in fam.test_size.items())]


def random_model(overrides: list[str], audio: np.ndarray | None = None, seed: int = 0) -> LoadedModel:
    """An untrained network (equality of two computations needs no training) whose BatchNorm statistics are
    those of ``audio``'s windows, so that its activations, and the posteriors, move along a stream of it."""
    cfg = load_config(None, overrides)
    torch.manual_seed(seed)
    net = create_model(cfg.model, cfg.features, len(LABELS))
    features = LogMel(cfg.features)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.momentum = None  # a plain average over the batch below
                m.bias.uniform_(-0.2, 0.2)
            elif isinstance(m, torch.nn.Linear):
                m.weight.normal_(std=1.0)
        if audio is not None:
            windows = np.lib.stride_tricks.sliding_window_view(audio, SAMPLE_RATE)[::SAMPLE_RATE // 4]
            net.train()(features(torch.from_numpy(np.ascontiguousarray(windows))))
    return LoadedModel(AudioClassifier(features, net).eval(), LABELS, cfg, Path("untrained"))


def write_checkpoint(model: LoadedModel, path: Path) -> Path:
    save_best(path, model.net, model.labels, model.config.to_dict(), {})
    return path


@pytest.fixture(scope="module")
def real_stream(mini_root) -> np.ndarray:
    """~9 s of real audio: six test clips, silence and a background recording between them."""
    names = sorted((mini_root / "testing_list.txt").read_text().split())[::40][:6]
    noise = read_audio(mini_root / "_background_noise_" / "running_tap.wav")
    parts = []
    for i, name in enumerate(names):
        gap = noise[i * 8000: i * 8000 + 4000] * 0.1 if i % 2 else np.zeros(4000, np.float32)
        parts += [gap.astype(np.float32), read_audio(mini_root / name)]
    return np.concatenate(parts + [np.zeros(3000, np.float32)])


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request, mini_root, real_stream, tmp_path_factory):
    """(model, its checkpoint, the --streaming file written by the command line)."""
    tmp = tmp_path_factory.mktemp(f"stateful_{request.param}")
    model = random_model(stream_overrides(request.param), real_stream)
    ckpt = write_checkpoint(model, tmp / "best_sc.pt")
    model = load_model(ckpt)
    words = [str(mini_root / w) for w in ("yes", "no")]
    assert export_cli.main([str(ckpt), "--format", "onnx", "--streaming", "--check-audio", *words,
                            "--check-clips", "4"]) == 0
    return model, ckpt, tmp / "best_sc.stream.onnx"


def _close(got: np.ndarray, reference: np.ndarray) -> None:
    np.testing.assert_allclose(got, reference, atol=1e-4 * max(1.0, float(np.abs(reference).max())), rtol=0)


def test_stateful_equals_the_windowed_model_at_every_hop(exported, real_stream):
    model, _, path = exported
    torch_runner = stateful.TorchStateful(model)
    starts, torch_logits = stateful.run_stream(torch_runner, real_stream)
    # Every window that ends on a hop, from the first full second: 0, hop, 2 hop, ...
    assert len(starts) == (len(real_stream) - SAMPLE_RATE) // torch_runner.hop + 1
    np.testing.assert_array_equal(starts, np.arange(len(starts)) * torch_runner.hop)
    reference = stateful.windowed_logits(model, real_stream, starts)
    assert reference.std(axis=0).max() > 0.1  # the logits move along the stream
    _close(torch_logits, reference)
    ort_starts, ort_logits = stateful.run_stream(stateful_export.OnnxStateful(path), real_stream)
    np.testing.assert_array_equal(ort_starts, starts)
    _close(ort_logits, reference)


def test_stateful_detector_finds_the_same_events(exported, real_stream):
    model, _, path = exported
    runner = stateful_export.OnnxStateful(path)
    starts, logits = stateful.run_stream(runner, real_stream)
    # Thresholds the untrained posteriors cross now and then, so that there are events to compare.
    probs = softmax(stateful.windowed_logits(model, real_stream, starts))[:, :4]
    threshold = float(np.quantile(probs.max(axis=1), 0.5))
    kwargs = {"threshold": threshold, "smooth": 2, "refractory_ms": 500.0, "filler_gate": False}
    windowed = StreamingDetector(model, hop_ms=runner.hop * 1000 / SAMPLE_RATE, **kwargs)
    expected = windowed.process(real_stream, chunk=1000)
    assert expected, "no events to compare: lower the threshold"
    for runner_or_path in (stateful.TorchStateful(model), path):
        detector = StreamingDetector(model, stateful=runner_or_path, **kwargs)
        got = detector.process(real_stream, chunk=733)  # chunks that are no multiple of the hop
        assert [e.to_dict() for e in got] == [e.to_dict() for e in expected]
        assert detector.windows == windowed.windows


def test_predict_stream_with_the_stateful_file(exported, real_stream, tmp_path, capsys):
    import soundfile as sf

    from sctrain.cli import predict

    model, ckpt, path = exported
    wav = tmp_path / "stream.wav"
    sf.write(wav, real_stream, SAMPLE_RATE, subtype="FLOAT")
    hop_ms = f"{stateful.plan_stream(model).hop_ms:g}"
    runs = []
    for extra in (["--hop-ms", hop_ms], ["--stateful", str(path)]):
        assert predict.main([str(ckpt), str(wav), "--stream", "--json", "--threshold", "0.3", *extra]) == 0
        runs.append(json.loads(capsys.readouterr().out)["results"][0])
    assert runs[0]["events"] == runs[1]["events"] and runs[0]["windows"] == runs[1]["windows"] > 0
    assert predict.main([str(ckpt), str(wav), "--stream", "--stateful", str(path), "--hop-ms", "100"]) == 2
    assert "fixed at export" in capsys.readouterr().err


def test_stateful_file_metadata_and_state_shapes(exported):
    import onnx

    model, _, path = exported
    runner = stateful_export.OnnxStateful(path)
    plan = stateful.plan_stream(model)
    meta = runner.meta
    assert meta["sctrain.input"] == "stream" and json.loads(meta["sctrain.input_shape"]) == [1, plan.hop]
    assert json.loads(meta["sctrain.labels"]) == LABELS
    assert set(json.loads(meta["sctrain.thresholds"])) == set(LABELS[:4])
    assert set(json.loads(meta["sctrain.detector"])) == {"smooth", "refractory_ms", "filler_gate"}
    info = json.loads(meta["sctrain.streaming"])
    assert info == plan.to_dict() and info["window_samples"] == SAMPLE_RATE
    assert (info["lead_in_samples"] + SAMPLE_RATE) % info["hop_samples"] == 0  # calls end where windows end
    graph = onnx.load(str(path)).graph
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.input, *graph.output]}
    assert [v.name for v in graph.input] == ["audio", *(s["name"] for s in info["states"])]
    assert dims["audio"] == [1, plan.hop] and dims["logits"] == [1, len(LABELS)]
    for s in info["states"]:
        assert dims[s["name"]] == s["shape"] == dims["next_" + s["name"]]
    assert info["states"][-1]["shape"][-1] == plan.top_frames  # the global pool's frames


@pytest.mark.parametrize("change, key", [
    (["features.normalise=clip"], "features.normalise: none"),
    (["features.center=true"], "features.center: false"),
    (["model.kwsnet.time_padding=same"], "model.kwsnet.time_padding: valid"),
    (["model.name=tcresnet", "model.tcresnet.width_multiplier=0.25", "model.tcresnet.depth=8"],
     "has no stateful streaming form"),
])
def test_a_checkpoint_that_cannot_stream_fails_in_one_line(change, key, tmp_path, capsys):
    model = random_model([*stream_overrides("kwsnet"), *change])
    ckpt = write_checkpoint(model, tmp_path / "best_sc.pt")
    assert export_cli.main([str(ckpt), "--format", "onnx", "--streaming", "--check-audio", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err
    assert not (tmp_path / "best_sc.stream.onnx").exists()


def test_hops_follow_the_network_stride():
    kwsnet = random_model(stream_overrides("kwsnet"))  # four time pools of 2 over 10 ms frames: 160 ms
    assert stateful.plan_stream(kwsnet).hop == 2560 and stateful.network_stride(kwsnet) == 16
    assert stateful.plan_stream(kwsnet, 5120).hop == 5120
    with pytest.raises(stateful.StreamingError, match="multiple of 2560 samples"):
        stateful.plan_stream(kwsnet, 1600)
    dscnn = random_model(stream_overrides("dscnn"))  # DS-CNN-S: time stride 2 over 20 ms frames
    assert stateful.plan_stream(dscnn).hop == 1920  # the smallest multiple of 40 ms >= 100 ms
    with pytest.raises(ValueError, match="fixed at export"):
        StreamingDetector(dscnn, hop_ms=100.0, stateful=stateful.TorchStateful(dscnn))


def test_streaming_families_are_the_ones_with_stream_layers():
    for name in list_models():
        fam = get_family(name)
        tiny = [*(f"model.{name}.{k}={v}" for k, v in fam.test_size.items()),
                *(f"features.{k}={v}" for k, v in fam.features.items())]
        model = random_model([f"model.name={name}", *STREAMABLE, *tiny])
        assert hasattr(model.net, "stream_layers") == (name in FAMILIES), name


def test_feature_and_padding_options_are_checked():
    for bad in ("features.normalise=global", "model.kwsnet.time_padding=causal", "model.dscnn.time_padding=x"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])
    cfg = load_config(None, STREAMABLE)
    feats = LogMel(cfg.features)(torch.zeros(2, SAMPLE_RATE))
    assert feats.shape == (2, 1, 64, 97)  # only frames wholly inside the clip: (16000 - 512) // 160 + 1
    assert torch.allclose(feats, torch.full_like(feats, float(np.log(1e-6))))  # silence, not normalised
