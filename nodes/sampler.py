"""Streaming Sampler node: the whole video in one node, chunk by chunk, resumable, any audio length.

Returns a small handle to the job directory (``INFINITETALK_FRAMES``: finished chunks as uint8 on disk)
instead of an IMAGE batch of every frame (2000 frames at 640x640 would be 9.8 GB of float32 held in RAM
by ComfyUI's cache); Video Combine streams it. ``image_frames`` additionally returns the last N frames
as an IMAGE (default 1: the last frame, e.g. to chain a follow-up shot).
"""
from __future__ import annotations

from .common import (
    AUDIO_FEATURES_TYPE,
    CATEGORY,
    FRAMES_TYPE,
    MODEL_TYPE,
    REFERENCES_TYPE,
    coded_errors,
)

SIZE_MODES = ("auto_480", "auto_720", "custom")
MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF


def _tip(text: str) -> dict:
    return {"tooltip": text}


class InfiniteTalkStreamingSampler:
    DESCRIPTION = (
        "Generates the talking video chunk by chunk (81 frames, 9 context frames by default) for the "
        "whole audio: the output is exactly as long as the audio. Finished chunks are saved in a job "
        "folder; re-queueing the same inputs after a crash or an interrupt resumes where it stopped."
    )
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = (FRAMES_TYPE, "IMAGE", "INT", "FLOAT")
    RETURN_NAMES = ("frames", "images", "frame_count", "fps")
    OUTPUT_TOOLTIPS = ("Handle to the finished frames on disk: connect to Video Combine.",
                       "The last image_frames frames as an IMAGE batch.",
                       "Number of frames (= audio length at 25 fps, or max_frames).",
                       "Frame rate of the frames (25).")

    @classmethod
    def INPUT_TYPES(cls):
        from ..infinitetalk_core.sampling.schedulers import SCHEDULERS
        from ..infinitetalk_core.sampling.step_cache import STEP_CACHES
        from ..infinitetalk_core.stream.settings import COLOR_METHODS, COLOR_REFERENCES, MODES

        return {
            "required": {
                "model": (MODEL_TYPE, _tip("The InfiniteTalk DiT from Model Loader.")),
                "vae": ("VAE", _tip("The Wan 2.1 VAE from ComfyUI's Load VAE (wan_2.1_vae.safetensors).")),
                "positive": ("CONDITIONING", _tip("Prompt from CLIPTextEncode with the umt5-xxl encoder "
                             "(Load CLIP, type wan). Several entries (Conditioning Combine) = one prompt "
                             "per chunk, the last one repeating.")),
                "negative": ("CONDITIONING", _tip("Negative prompt (the reference's long default works well).")),
                "clip_vision": ("CLIP_VISION", _tip("CLIP vision ViT-H (clip_vision_h.safetensors) from Load CLIP "
                                "Vision: the DiT's image tokens of each chunk's reference frame.")),
                "references": (REFERENCES_TYPE, _tip("Reference frames from Reference Sampler.")),
                "audio_features": (AUDIO_FEATURES_TYPE, _tip("Speech features from Audio Encode.")),
                "size": (list(SIZE_MODES), {"default": "auto_480", "tooltip":
                         "auto_480/auto_720: the reference's bucket closest to the source's aspect ratio "
                         "(about 640x640 / 960x960 pixels); custom: width x height below."}),
                "width": ("INT", {"default": 832, "min": 64, "max": 2048, "step": 16, "tooltip":
                          "Width for size=custom (a multiple of 16)."}),
                "height": ("INT", {"default": 480, "min": 64, "max": 2048, "step": 16, "tooltip":
                           "Height for size=custom (a multiple of 16)."}),
                "chunk_frames": ("INT", {"default": 81, "min": 5, "max": 1001, "step": 4, "tooltip":
                                 "Frames per chunk (4n+1). 81 is what InfiniteTalk was trained on; fewer "
                                 "frames need less VRAM."}),
                "context_frames": ("INT", {"default": 9, "min": 1, "max": 97, "step": 4, "tooltip":
                                   "Frames carried from one chunk to the next for motion continuity "
                                   "(4n+1, smaller than chunk_frames; reference 9)."}),
                "steps": ("INT", {"default": 40, "min": 1, "max": 200, "tooltip":
                          "Denoising steps per chunk (reference 40; 4-8 with a distill LoRA)."}),
                "shift": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip":
                          "Timestep shift; 0 = automatic (7 at 480, 11 at 720, as the reference)."}),
                "text_guidance": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip":
                                  "Text CFG scale (reference 5; 1 with a distill LoRA saves a pass)."}),
                "audio_guidance": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip":
                                   "Audio CFG scale: higher = stronger lip sync (reference 4; 2 with a LoRA)."}),
                "seed": ("INT", {"default": 42, "min": 0, "max": MAX_SEED, "control_after_generate": "fixed",
                         "tooltip": "Seed; chunk k's noise depends only on (seed, k), so resumes are identical. "
                         "Keep the editor's control on 'fixed' so re-queueing resumes the same job."}),
                "color_method": (list(COLOR_METHODS), {"default": "lab", "tooltip":
                                 "Colour correction inside the loop (lab = the reference's CIELAB mean/std); "
                                 "none disables it."}),
                "color_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                                   "0 = no correction, 1 = full (reference default)."}),
                "color_reference": (list(COLOR_REFERENCES), {"default": "first", "tooltip":
                                    "Match colours to: the first reference frame (reference; image input), "
                                    "each chunk's own reference (best for dubbing a video), or the previous "
                                    "chunk's last frame."}),
                "resume": ("BOOLEAN", {"default": True, "tooltip":
                           "Reuse finished chunks of an identical earlier run (after a crash or interrupt). "
                           "Off: start over (the old job folder is replaced)."}),
            },
            "optional": {
                "use_apg": ("BOOLEAN", {"default": False, "tooltip":
                            "Adaptive projected guidance: fewer over-saturation artefacts at high scales."}),
                "apg_momentum": ("FLOAT", {"default": -0.75, "min": -0.99, "max": 1.0, "step": 0.01,
                                           "tooltip": "APG momentum (reference -0.75)."}),
                "apg_norm_threshold": ("FLOAT", {"default": 55.0, "min": 0.0, "max": 1000.0, "step": 1.0,
                                                 "tooltip": "APG norm clamp (reference 55)."}),
                "max_frames": ("INT", {"default": 0, "min": 0, "max": 1_000_000, "tooltip":
                               "Cap on output frames; 0 = the whole audio (the output equals its length)."}),
                "image_frames": ("INT", {"default": 1, "min": 0, "max": 10_000, "tooltip":
                                 "Also return the last N frames as IMAGE (RAM: N x W x H x 12 bytes); "
                                 "use Video Combine on 'frames' for the full video."}),
                "job_name": ("STRING", {"default": "", "tooltip":
                             "Job folder name under output/InfiniteTalk_jobs; empty = derived from the "
                             "inputs (identical inputs resume automatically)."}),
                "scheduler": (list(SCHEDULERS), {"default": "flow_euler", "tooltip":
                              "flow_euler: the reference's sampler (40 steps). unipc: better at 8-20 steps "
                              "(WanVideoWrapper's default). distill: the fixed 4-step timesteps the lightx2v "
                              "LoRA was trained with (shift 0 = its 5; use text 1, audio 2)."}),
                "step_cache": (list(STEP_CACHES), {"default": "none", "tooltip":
                               "Skip DiT work on steps that change little: teacache (the reference's, "
                               "calibrated on the 14B model, about 2x at 0.2) or easycache (calibration-free). "
                               "Needs 10+ steps; refused with distill presets."}),
                "cache_threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip":
                                    "Higher skips more and costs quality; 0 = the method's default (0.2)."}),
                "cache_start_step": ("INT", {"default": 0, "min": 0, "max": 200, "tooltip":
                                     "Steps before this are always computed; 0 = the method's default "
                                     "(TeaCache 5, EasyCache 15% of the steps)."}),
                "cache_end_step": ("INT", {"default": 0, "min": 0, "max": 200, "tooltip":
                                   "Steps from this one on are always computed; 0 = the method's default "
                                   "(TeaCache none, EasyCache the last 5%)."}),
                "refine_every": ("INT", {"default": 0, "min": 0, "max": 10_000, "tooltip":
                                 "EXPERIMENTAL drift repair: before every Nth chunk, re-noise the context "
                                 "frames and denoise them again towards the reference (0 = off). Costs "
                                 "refine_steps x passes DiT calls per refined chunk."}),
                "refine_strength": ("FLOAT", {"default": 0.3, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip":
                                    "Noise level the context is taken back to (higher repairs more, and "
                                    "changes more)."}),
                "refine_steps": ("INT", {"default": 4, "min": 1, "max": 50, "tooltip":
                                 "Denoising steps of one refinement."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip":
                            "1 = generate every chunk from noise. Below 1 (video input only): start each chunk "
                            "from the source video's own frames at that time, noised, and run only the last "
                            "steps x denoise steps, so gestures, head motion and camera stay the source's "
                            "(0.5-0.8 re-lip-syncs; lower keeps more and moves the mouth less)."}),
                "dub_mask": ("MASK", {"tooltip": "Where the video may change (1 = regenerate, e.g. the face "
                             "or the speaker; 0 = keep the source exactly). One mask, or one per source "
                             "frame, drawn at the source size. With one audio track the audio reaches only "
                             "the inside, so bystanders stay silent."}),
                "mask_feather": ("INT", {"default": 8, "min": 0, "max": 256, "tooltip":
                                 "Soft edge of the dub mask in output pixels, inside the mask (outside stays "
                                 "the source exactly)."}),
                "previous_frames": ("IMAGE", {"tooltip": "Continue this clip: its last context_frames frames "
                                    "are the first chunk's context, so the new video picks up where it ends "
                                    "(the output holds the new frames only)."}),
                "regenerate_from_chunk": ("INT", {"default": 0, "min": 0, "max": 1_000_000, "tooltip":
                                          "Re-roll: regenerate chunk N (as numbered in the progress, from 1) "
                                          "with reroll_seed and every chunk after it; chunks before N are "
                                          "kept. 0 = off. Re-queueing the same re-roll resumes it."}),
                "reroll_seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "tooltip":
                                "Seed of the re-rolled chunk (later chunks keep the seed above)."}),
                "mode": (list(MODES), {"default": "infinitetalk", "tooltip":
                         "infinitetalk: InfiniteTalk's conditioning (context_frames clean context frames). "
                         "svi_talk: Stable Video Infinity's talk mode, for MultiTalk audio weights + the "
                         "SVI-Talk LoRA: each chunk continues from 1 motion frame (context_frames is "
                         "ignored) with the reference image as every padding frame; shift 0 = its 5. "
                         "SVI-Talk's settings: 50 steps, text 2, audio 5."}),
                "chapters": ("STRING", {"default": "", "tooltip": "Cut the job into independent chapters, "
                             "each starting from its own reference frame (render them in any order, on "
                             "several servers: scripts/post_workflow.py --servers). Empty = one chapter; "
                             "auto = about every minute, in a silence (or at a scene cut of a source video); "
                             "a number = that many chapters, cut in the silence nearest to even parts; or "
                             "chapter start times in seconds, e.g. 61.2, 130.4."}),
                "chapter": ("INT", {"default": 0, "min": 0, "max": 100_000, "tooltip": "0 = render every "
                            "chapter one after another (the frames play them in order); N = only chapter N "
                            "(from 1), into its own job folder, and the frames are that chapter's."}),
                "silence_threshold_db": ("FLOAT", {"default": -40.0, "min": -120.0, "max": 0.0, "step": 1.0,
                                         "tooltip": "Chapters (auto or a number): audio quieter than this "
                                         "(RMS, dBFS) counts as silence."}),
                "min_silence_ms": ("INT", {"default": 300, "min": 40, "max": 60_000, "step": 10, "tooltip":
                                   "Chapters: the shortest pause that may hold a chapter boundary."}),
                "live_preview": ("BOOLEAN", {"default": True, "tooltip": "Watch the video while it renders: "
                                 "each finished chunk is also encoded (as Video Combine would) into an HLS "
                                 "playlist in the job folder (output/InfiniteTalk_jobs/<job>/live/index.m3u8) "
                                 "played on this node; Video Combine then joins those parts without "
                                 "re-encoding (at crf 19). Off: no live files, no extra encode."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def IS_CHANGED(cls, unique_id=None, **_):
        """Same inputs -> ComfyUI's cache; re-run only after Video Combine deleted this node's job folder."""
        from .frames import job_epoch

        return job_epoch(None if unique_id is None else str(unique_id))

    @coded_errors("generating the video")
    def sample(self, **inputs):
        from .run import run_stream  # lazy: keeps ComfyUI's start-up free of the engine's imports

        return run_stream(inputs)
