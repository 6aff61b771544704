"""Host-independent InfiniteTalk engine: DiT, audio features, streaming generation, video output.

Nothing in this package imports ComfyUI; hosts pass their services in (see ``stream.host``).
"""
__version__ = "0.1.0"
