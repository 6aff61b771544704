"""Video files through the bundled ffmpeg: probing, bounded-memory frame reading, mp4 writing with audio."""

from .probe import VideoInfo, probe_video
from .reader import iter_video_frames, read_video_frames
from .writer import Mp4Writer, write_mp4

__all__ = ["VideoInfo", "probe_video", "iter_video_frames", "read_video_frames", "Mp4Writer", "write_mp4"]
