"""The doctor names each file from its header, says where it belongs and what is missing."""
from __future__ import annotations

import shutil
from importlib import import_module

import torch
from safetensors.torch import save_file


def test_doctor_identifies_misplaced_and_missing_files(pack, models_dir, golden_dir, capsys):
    doctor = import_module(pack.__name__ + ".infinitetalk_core.doctor")
    shutil.copy(golden_dir / "dit" / "model_infinitetalk.safetensors", models_dir / "diffusion_models" / "it.safetensors")
    shutil.copytree(golden_dir / "audio" / "wav2vec2_tiny", models_dir / "audio_encoders" / "w2v")
    save_file({"x": torch.zeros(2)}, models_dir / "loras" / "junk.safetensors")
    (models_dir / "vae" / "broken.safetensors").write_bytes(b"\x01\x02")
    code = doctor.main([str(models_dir)])
    out = capsys.readouterr().out
    assert code == 1
    assert "diffusion_models/it.safetensors: InfiniteTalk audio weights" in out
    assert "MOVE to models/model_patches/" in out
    assert "w2v/model.safetensors: a wav2vec2" in out
    assert "vae/broken.safetensors: unreadable: E_PIPELINE_LOAD" in out
    assert "MISSING  Wan2.1 I2V-14B DiT -> put it in models/diffusion_models/" in out
    assert "MISSING  Wan 2.1 VAE -> put it in models/vae/" in out
    assert "found    chinese-wav2vec2-base" in out


def test_doctor_rejects_a_missing_folder(pack, tmp_path, capsys):
    doctor = import_module(pack.__name__ + ".infinitetalk_core.doctor")
    assert doctor.main([str(tmp_path / "nope")]) == 2
    assert "E_INPUT_VALIDATION" in capsys.readouterr().err
