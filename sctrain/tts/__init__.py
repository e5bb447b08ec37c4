"""Keywords from text: offline TTS engines, adversarial negatives and the dataset writer (python -m sctrain.tts)."""
