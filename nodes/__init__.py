"""The node classes ComfyUI registers (classic V1 nodes: no ComfyUI import needed to define them)."""
from .audio import InfiniteTalkAudioEncode
from .loaders import InfiniteTalkModelLoader, InfiniteTalkWav2VecLoader
from .post import InfiniteTalkColorMatch, InfiniteTalkVideoCombine
from .references import InfiniteTalkReferenceSampler
from .sampler import InfiniteTalkStreamingSampler

NODE_CLASS_MAPPINGS = {
    "InfiniteTalkModelLoader": InfiniteTalkModelLoader,
    "InfiniteTalkWav2VecLoader": InfiniteTalkWav2VecLoader,
    "InfiniteTalkAudioEncode": InfiniteTalkAudioEncode,
    "InfiniteTalkReferenceSampler": InfiniteTalkReferenceSampler,
    "InfiniteTalkStreamingSampler": InfiniteTalkStreamingSampler,
    "InfiniteTalkColorMatch": InfiniteTalkColorMatch,
    "InfiniteTalkVideoCombine": InfiniteTalkVideoCombine,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "InfiniteTalkModelLoader": "InfiniteTalk Model Loader",
    "InfiniteTalkWav2VecLoader": "InfiniteTalk Wav2Vec Loader",
    "InfiniteTalkAudioEncode": "InfiniteTalk Audio Encode",
    "InfiniteTalkReferenceSampler": "InfiniteTalk Reference Sampler",
    "InfiniteTalkStreamingSampler": "InfiniteTalk Streaming Sampler",
    "InfiniteTalkColorMatch": "InfiniteTalk Color Match",
    "InfiniteTalkVideoCombine": "InfiniteTalk Video Combine",
}
