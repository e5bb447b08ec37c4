"""ONNX / TorchScript export: same predictions as PyTorch on real clips, metadata, failure paths, and the
latency benchmark that runs the exported files."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from support import REPO

from sctrain.cli.export import main as export_main
from sctrain.inference import export
from sctrain.inference.export import ExportError, check_parity, clip_batch, export_onnx, find_clips, load_exported
from sctrain.inference.loading import load_model


@pytest.fixture(scope="module")
def test_audio(mini_root) -> np.ndarray:
    """48 real clips of the test split (all 8 words), 1 s each."""
    files = [mini_root / f for f in sorted((mini_root / "testing_list.txt").read_text().split())]
    return clip_batch([files[i] for i in np.linspace(0, len(files) - 1, 48).round().astype(int)])


def _pytorch_logits(model, audio: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model.classifier(torch.from_numpy(audio)).numpy()


def _assert_same_predictions(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    assert np.abs(got - expected).max() < 1e-3


@pytest.mark.slow
def test_onnx_cli_export_runs_in_onnxruntime_like_pytorch(trained_checkpoint, model, test_audio, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "kws.onnx"
    # No --check-audio: the parity check finds real clips under the checkpoint's data.root (the mini dataset).
    proc = subprocess.run([sys.executable, "-m", "sctrain.export", str(trained_checkpoint), "--format", "onnx",
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "parity on 32 real clips: max |logit diff| = " in proc.stdout and "argmax agrees 32/32" in proc.stdout
    # A plain ONNX Runtime session, nothing from sctrain: what a deployment would do.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["sctrain.labels"]) == model.labels
    assert meta["sctrain.input"] == "audio" and json.loads(meta["sctrain.input_shape"]) == ["batch", 16000]
    assert json.loads(meta["sctrain.features"])["n_mels"] == model.config.features.n_mels
    expected = _pytorch_logits(model, test_audio)
    _assert_same_predictions(session.run(None, {"audio": test_audio})[0], expected)
    one = np.concatenate([session.run(None, {"audio": test_audio[i: i + 1]})[0] for i in range(4)])
    _assert_same_predictions(one, expected[:4])


@pytest.mark.slow
def test_onnx_logmel_export_matches_pytorch(model, test_audio, tmp_path):
    path = export_onnx(model, tmp_path / "kws.logmel.onnx", "logmel")
    exported = load_exported(path)
    assert exported.input == "logmel" and exported.labels == model.labels
    with torch.inference_mode():
        features = model.features(torch.from_numpy(test_audio)).numpy()
    _assert_same_predictions(exported(features), _pytorch_logits(model, test_audio))
    assert check_parity(model, exported, test_audio, atol=1e-3)["argmax_agree"] == len(test_audio)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("kind", ["audio", "logmel"])
def test_torchscript_export_matches_pytorch(trained_checkpoint, model, test_audio, mini_root, tmp_path, capsys, kind):
    out = tmp_path / f"kws.{kind}.pt"
    assert export_main([str(trained_checkpoint), "--format", "torchscript", "--input", kind, "--out", str(out),
                        "--check-audio", str(mini_root / "yes"), str(mini_root / "no"), "--check-clips", "8"]) == 0
    assert "argmax agrees 8/8" in capsys.readouterr().out
    files = {"sctrain.labels": "", "sctrain.input": ""}
    module = torch.jit.load(str(out), _extra_files=files)
    assert json.loads(files["sctrain.labels"]) == model.labels and files["sctrain.input"].decode() == kind
    x = torch.from_numpy(test_audio)
    with torch.inference_mode():
        got = module(x if kind == "audio" else model.features(x)).numpy()
    _assert_same_predictions(got, _pytorch_logits(model, test_audio))


def test_parity_failure_fails_the_export(trained_checkpoint, model, mini_root, tmp_path, capsys):
    out = tmp_path / "kws.pt"
    # A bound no float computation meets: the command must refuse the file with one line, exit 2.
    assert export_main([str(trained_checkpoint), "--format", "torchscript", "--out", str(out), "--atol", "-1",
                        "--check-audio", str(mini_root / "go"), "--check-clips", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sctrain: error: parity check failed") and str(out) in err[0]
    assert not out.exists() and not list(tmp_path.glob(".tmp*")), "a file that failed the check was left behind"
    # And a real mismatch: a file exported from other weights than the model it is checked against.
    other = load_model(trained_checkpoint)
    with torch.no_grad():
        other.net.head.bias += torch.linspace(-5, 5, len(other.labels))
    export.export_torchscript(other, tmp_path / "other.pt")
    audio = clip_batch(find_clips([mini_root / "up"], 8))
    with pytest.raises(ExportError, match="parity check failed"):
        check_parity(model, load_exported(tmp_path / "other.pt"), audio, atol=1e-3)


def test_export_errors_are_one_line(trained_checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cases = [
        ([str(tmp_path / "absent.pt"), "--format", "torchscript"], "checkpoint not found"),
        ([str(trained_checkpoint), "--format", "torchscript", "--out", str(tmp_path / "x.pt"),
          "--check-audio", str(tmp_path / "empty")], "no audio clips for the parity check"),
    ]
    for argv, text in cases:
        assert export_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sctrain: error: ") and text in err[0], err


def test_missing_onnxruntime_is_one_line(trained_checkpoint, tmp_path):
    # None in sys.modules makes "import onnxruntime" raise ImportError, as in an environment without it.
    code = ("import sys; sys.modules['onnxruntime'] = None; from sctrain.cli.export import main; "
            f"sys.exit(main([{str(trained_checkpoint)!r}, '--format', 'onnx', '--out', {str(tmp_path / 'm.onnx')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["sctrain: error: onnxruntime not installed: pip install 'sctrain[deploy]'"], proc.stderr
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_latency_benchmark_runs_every_backend(trained_checkpoint, tmp_path):
    out = tmp_path / "latency.json"
    proc = subprocess.run([sys.executable, "-m", "sctrain.bench", "latency", str(trained_checkpoint), "--no-compile",
                           "--iters", "5", "--large-batch", "4", "--stream-seconds", "3", "--json", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = report["results"]["cpu"]
    assert set(rows) == {"eager", "eager-fast", "onnxruntime", "torchscript"}
    for name, row in rows.items():
        assert row["batch1"]["1"]["p50_ms"] > 0 and row["large_batch"]["clips_per_s"] > 0, name
        assert row["speedup_vs_eager"] > 0
    assert len(report["streaming"]) == 4
    assert all(0 < r["real_time_factor"] for r in report["streaming"].values())
    assert "onnxruntime" in proc.stdout and "real-time factor" in proc.stdout
