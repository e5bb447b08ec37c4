"""LiteRT (TFLite) export: float and int8 files run in the real ai-edge-litert interpreter like PyTorch on real
clips, carry their metadata, and a client without torch reads and runs them. Skipped without sctrain[edge]."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from support import REPO, quickly_trained

from sctrain.inference import export

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

# What a device-side Python client does with ai-edge-litert alone (torch cannot even be imported): the manifest's
# front end on each WAV, then the interpreter.
CLIENT = """
import json, sys
import numpy as np
import soundfile as sf
sys.modules["torch"] = None
from sctrain.inference.litert import LiteRTInterpreter, read_metadata
from sctrain.inference.manifest import manifest_path, model_input, read_manifest
manifest = read_manifest(manifest_path(sys.argv[1]))
runner = LiteRTInterpreter(sys.argv[1])
argmax = [int(runner(model_input(manifest, sf.read(wav, dtype="float32")[0])).argmax()) for wav in sys.argv[2:]]
print(json.dumps({"labels": json.loads(read_metadata(sys.argv[1])["sctrain.labels"]),
                  "manifest_labels": manifest["labels"], "argmax": argmax}))
"""


@pytest.fixture(scope="module")
def kwsnet(mini_root, tmp_path_factory):
    torch.set_num_threads(1)
    return quickly_trained("kwsnet", mini_root, tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("kind,int8", [("logmel", False), ("logmel", True), ("audio", False), ("audio", True)],
                         ids=["logmel-float", "logmel-int8", "audio-float", "audio-int8"])
def test_tflite_export_runs_in_the_litert_interpreter(kwsnet, kind, int8, mini_root, tmp_path):
    from sctrain.inference.manifest import write_manifest

    model, test = kwsnet
    out = tmp_path / ("kws.int8.tflite" if int8 else "kws.tflite")
    tolerance = export.Tolerance.int8() if int8 else export.Tolerance(atol=1e-4)
    result = export.write_checked(model, out, "tflite", kind, test, tolerance, int8=int8, calibration_clips=64)
    assert result["clips"] == len(test)
    exported = export.load_exported(out)
    assert exported.labels == model.labels and exported.input == kind
    assert json.loads(exported.meta["sctrain.input_shape"])[0] == 1
    assert ("sctrain.quantization" in exported.meta) == int8
    # Fully integer with features in; with audio in, the front end (and so the input) stays float32.
    assert exported.runner.input["dtype"] == (np.int8 if int8 and kind == "logmel" else np.float32)
    write_manifest(model, out, exported.meta, result)
    files = sorted((mini_root / "testing_list.txt").read_text().split())
    wavs = [mini_root / f for f in files[:: len(files) // 24][:24]]  # 1 s test clips, every word
    with torch.inference_mode():
        reference = model.classifier(torch.from_numpy(export.clip_batch(wavs))).numpy()
    proc = subprocess.run([sys.executable, "-c", CLIENT, str(out), *map(str, wavs)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = json.loads(proc.stdout.strip().splitlines()[-1])
    assert client["labels"] == client["manifest_labels"] == model.labels
    agree = np.mean(np.array(client["argmax"]) == reference.argmax(1))
    assert agree == 1.0 if not int8 else agree >= 0.9


def test_real_valued_front_end_equals_logmel(kwsnet):
    from sctrain.inference.litert_export import RealLogMel

    model, test = kwsnet
    with torch.inference_mode():
        expected = model.features(torch.from_numpy(test)).numpy()
        got = RealLogMel(model.features)(torch.from_numpy(test)).numpy()
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-3  # 3.2e-4 measured (a quiet band)
