"""Chapter mode of post_workflow.py: one long job spread over several ComfyUI servers by chapters.

The chapters are resolved here, once, into explicit start times (``chapter_times_spec``), so every
server renders the very same boundaries. Each server gets one chapter at a time (its own queue is the
engine); a failed chapter is retried on another server first, then on the same one. All servers use
the same job name, so with a shared output folder any chapter resumes from the chunks any server left.
The chapter mp4s are stitched by stream copy with the original audio (``concat_streams``).

The scheduling (``run_chapters``) is a pure function of a ``render(server, chapter)`` callable, so it is
tested without a server. The engine imports (numpy, ffmpeg helpers) are lazy: post_workflow.py's plain
mode stays standard-library only.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
SAMPLER = "InfiniteTalkStreamingSampler"
COMBINE = "InfiniteTalkVideoCombine"
FPS = 25
SPEC_HELP = ("Fix: write --chapters auto, a number of chapters (e.g. 4), or chapter start times in seconds "
             "separated by commas (e.g. \"61.2, 130.4\").")
_SPEC = re.compile(r"auto|\d+|\s*\d+(\.\d+)?(\s*[,;\s]\s*\d+(\.\d+)?)*\s*", re.IGNORECASE)


class FarmError(ValueError):
    """A chapter-mode problem the user must fix (one line: what was wrong, and how to fix it)."""


class ChapterFailed(RuntimeError):
    """One attempt at one chapter failed (the message says why, in one line)."""


@dataclass(frozen=True)
class Part:
    """Chapter ``number`` (from 1, the sampler's ``chapter`` input): global frames [start, stop)."""

    number: int
    start: int
    stop: int
    kind: str = "start"

    @property
    def frames(self) -> int:
        """The chapter's frame count."""
        return self.stop - self.start


@dataclass
class Outcome:
    """What ``run_chapters`` returns per chapter: the result, or the last failure."""

    result: object = None
    error: str = ""
    server: str = ""
    seconds: float = 0.0
    attempts: int = 0


def check_spec(spec: str) -> str:
    """The --chapters value, stripped; FarmError for one that is not auto, N or times."""
    text = str(spec).strip()
    if not text or not _SPEC.fullmatch(text) or text == "0":
        raise FarmError(f"--chapters {spec!r} is not auto, a number of chapters or a list of times. "
                        + SPEC_HELP)
    return text


def _engine():
    """The pack's core (numpy, ffmpeg), imported only in chapter mode."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # why: the core is a package at the repo root, not installed
    import infinitetalk_core.audio.decode as decode
    import infinitetalk_core.audio.prepare as prepare
    import infinitetalk_core.stream.chapters as chapters
    return decode, prepare, chapters


def resolve_chapters(spec: str, audio: Path, silence_db: float = -40.0,
                     min_silence_ms: int = 300) -> tuple[list[Part], str, int]:
    """(chapters, their explicit-times spec, the audio's 25 fps frame count) for the speech file."""
    decode, prepare, chapters = _engine()
    from infinitetalk_core.errors import InfiniteTalkError

    try:
        samples, rate = decode.load_audio_file(audio)
        # why: the frame count the Audio Encode gets, from its 16 kHz resample (ceil), not the file's rate
        model_rate = prepare.MODEL_SAMPLE_RATE
        num_frames = prepare.frames_for_samples(-(-samples.shape[-1] * model_rate // rate), model_rate)
        silences = chapters.find_silences(samples, rate, silence_db, min_silence_ms)
        plan = chapters.plan_chapters(check_spec(spec), num_frames, silences)
    except InfiniteTalkError as exc:
        raise FarmError(f"{exc.what} " + (f"Fix: {exc.fix}" if exc.fix else SPEC_HELP)) from None
    parts = [Part(c.index + 1, c.start, c.stop, c.kind) for c in plan]
    return parts, chapters.chapter_times_spec(plan), num_frames


def _one(graph: dict, kind: str) -> str:
    """The id of the workflow's only ``kind`` node (FarmError for none or several)."""
    ids = [i for i, n in graph.items() if n.get("class_type") == kind]
    if len(ids) != 1:
        found = f"{len(ids)} of them ({', '.join(ids)})" if ids else "none"
        raise FarmError(f"chapter mode needs exactly one {kind} in the workflow, it has {found}. "
                        f"Fix: post a workflow with one {kind}.")
    return ids[0]


def job_name_for(graph: dict, audio: Path) -> str:
    """The sampler's job_name, or one derived from the workflow and the audio (the same on every run,
    so re-running the command resumes the same job folders)."""
    name = str(graph[_one(graph, SAMPLER)]["inputs"].get("job_name") or "").strip()
    if name:
        return name
    digest = hashlib.sha256(json.dumps(graph, sort_keys=True).encode() + audio.read_bytes()).hexdigest()
    return f"chapters-{digest[:12]}"


def chapter_graph(graph: dict, part: Part, spec: str, job_name: str) -> dict:
    """The workflow for one chapter: same boundaries everywhere, one chapter, its own file prefix."""
    out = copy.deepcopy(graph)
    out[_one(out, SAMPLER)]["inputs"].update(chapters=spec, chapter=part.number, job_name=job_name)
    combines = [n for n in out.values() if n.get("class_type") == COMBINE]
    if not combines:
        raise FarmError(f"chapter mode needs an {COMBINE} (it writes each chapter's mp4). Fix: add one.")
    for node in combines:  # why: two servers sharing one output folder must never race on a file counter
        prefix = str(node["inputs"].get("filename_prefix") or "InfiniteTalk/talk")
        node["inputs"]["filename_prefix"] = f"{prefix}-{job_name}-chapter{part.number:02d}"
    return out


def _pick(pending: list[Part], tried: dict[int, list[str]], server: str, servers: Sequence[str]):
    """The next chapter for ``server``: one it has not failed yet; one every server failed; or None."""
    for part in pending:
        if server not in tried[part.number]:
            return part
    for part in pending:
        if set(servers) <= set(tried[part.number]):
            return part
    return None


def run_chapters(parts: Sequence[Part], servers: Sequence[str], render: Callable[[str, Part], object],
                 attempts: int = 3, log: Callable[[str], None] = print) -> dict[int, Outcome]:
    """Render every chapter, at most one in flight per server, the next to whichever server frees up.

    ``render(server, part)`` returns the chapter's result or raises (the message is the reason). A
    failed chapter goes back to the queue for another server (then the same one), ``attempts`` tries
    in all. Returns {chapter number: Outcome}; a chapter that failed every try has ``error`` set.
    """
    pending, tried = list(parts), {p.number: [] for p in parts}
    outcomes = {p.number: Outcome() for p in parts}
    state = {"busy": 0}
    cond = threading.Condition()

    def worker(server: str) -> None:
        """One server's loop: take a chapter, render it, until nothing is left or can come back."""
        while True:
            with cond:
                part = _pick(pending, tried, server, servers)
                while part is None and (pending or state["busy"]):
                    cond.wait(0.5)
                    part = _pick(pending, tried, server, servers)
                if part is None:
                    return
                pending.remove(part)
                state["busy"] += 1
            _attempt(server, part)

    def _attempt(server: str, part: Part) -> None:
        """One try; a failure puts the chapter back at the front of the queue."""
        started = time.monotonic()
        try:
            result, error = render(server, part), ""
        except Exception as exc:  # noqa: BLE001 - any failure of one try is a reason to retry elsewhere
            result, error = None, " ".join(str(exc).split()) or type(exc).__name__
        with cond:
            out = outcomes[part.number]
            out.attempts += 1
            out.server, out.seconds = server, time.monotonic() - started
            if not error:
                out.result, out.error = result, ""
            else:
                out.error = error
                tried[part.number].append(server)
                again = out.attempts < attempts
                log(f"chapter {part.number} failed on {server} (try {out.attempts}/{attempts}): {error}"
                    + ("; retrying" if again else "; giving up"))
                if again:
                    pending.insert(0, part)  # why: a retried chapter goes first, it may hold chunks already
            state["busy"] -= 1
            cond.notify_all()

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def check_servers(text: str) -> list[str]:
    """``--servers URL,URL`` -> the URLs (FarmError for an empty list, a duplicate or a non-http URL)."""
    servers = [s.strip().rstrip("/") for s in str(text).split(",") if s.strip()]
    bad = [s for s in servers if urllib.parse.urlsplit(s).scheme not in ("http", "https")]
    if not servers or bad:
        raise FarmError(f"--servers {text!r} is not a comma-separated list of http:// URLs. "
                        "Fix: write it like --servers http://127.0.0.1:8188,http://127.0.0.1:8189.")
    if len(set(servers)) != len(servers):
        raise FarmError(f"--servers {text!r} names a server twice. Fix: list each server once.")
    return servers


def _history_error(history: dict) -> str:
    """One line: why a prompt failed, from its /history status messages."""
    for kind, data in history.get("status", {}).get("messages", []):
        if kind == "execution_error":
            first = str(data.get("exception_message", "")).strip().splitlines() or [""]
            return f"{data.get('node_type', 'a node')} failed: {first[0]}"
        if kind == "execution_interrupted":
            return "the run was interrupted on the server"
    return f"the server reported {history.get('status', {}).get('status_str')!r}"


def _refusal(text: str) -> str:
    """One line from submit's "the server refused the workflow: {json}" (the JSON is cut at 2000)."""
    found = re.search(r'"message": "((?:[^"\\]|\\.)*)"', text)
    return f"the server refused the workflow: {found.group(1)}" if found else " ".join(text.split())[:300]


def count_frames(path: Path) -> int:
    """Frames of an mp4's video stream, counted by decoding it (no ffprobe here)."""
    _engine()
    from infinitetalk_core.video.probe import decoded_frame_count
    return decoded_frame_count(path)


def make_render(post, graph: dict, files: dict, sets: list[str], spec: str, job_name: str,
                download_dir: Path, log: Callable[[str], None]) -> Callable[[str, Part], Path]:
    """``render(server, part)`` for ``run_chapters``: upload, post chapter ``part``, follow it, download
    its mp4 through /view into ``download_dir`` and check it has the chapter's frames."""
    def render(server: str, part: Part) -> Path:
        """One try of one chapter on one server; ChapterFailed (or any error) says why it failed."""
        quiet = lambda line: None  # noqa: E731 - the mapping was printed once already
        try:
            prepared = post.prepare(copy.deepcopy(graph), server, files, sets, log=quiet)
            client = f"chapter{part.number}-{time.time_ns()}"
            prompt_id = post.submit(server, chapter_graph(prepared, part, spec, job_name), client)
        except SystemExit as exc:  # submit's way of saying the server refused the workflow
            raise ChapterFailed(_refusal(str(exc))) from None
        log(f"chapter {part.number} -> {server} (prompt {prompt_id})")
        history = post.follow(server, client, prompt_id, log=quiet, timeout=24 * 3600)
        if history["status"]["status_str"] != "success":
            raise ChapterFailed(_history_error(history))
        found = post.videos(history)
        if len(found) != 1:
            raise ChapterFailed(f"expected one mp4 from the chapter, the server listed {len(found)}")
        query = urllib.parse.urlencode({k: found[0][k] for k in ("filename", "subfolder", "type")})
        target = download_dir / f"chapter{part.number:02d}.mp4"
        target.write_bytes(post._request(server, f"/view?{query}"))
        frames = count_frames(target)
        if frames != part.frames:
            raise ChapterFailed(f"its mp4 has {frames} frames, the chapter has {part.frames}")
        return target
    return render


def stitch(paths: Sequence[Path], out: Path, frame_count: int, audio: Path) -> Path:
    """The chapter mp4s joined by stream copy, with a fresh AAC of the original audio."""
    _engine()
    try:
        from infinitetalk_core.video.concat import concat_streams
    except ImportError as exc:
        raise FarmError(f"cannot stitch the chapters: {exc}. Fix: update the pack (it needs "
                        "infinitetalk_core/video/concat.py).") from None
    return Path(concat_streams(list(paths), out, frame_count=frame_count, audio=str(audio)))


def _say(text: str) -> None:
    """Progress and errors go to stderr; stdout only says what was saved."""
    print(text, file=sys.stderr, flush=True)


def _report(parts: Sequence[Part], outcomes: dict[int, Outcome]) -> None:
    """One line per chapter: its span, where and how long it ran (its last try), or why it failed."""
    for p in parts:
        o = outcomes[p.number]
        state = f"done on {o.server} in {o.seconds:.1f} s" if not o.error else f"FAILED: {o.error}"
        _say(f"chapter {p.number}/{len(parts)} [{p.start / FPS:.2f}-{p.stop / FPS:.2f} s, {p.frames} frames] "
             f"{state} ({o.attempts} tr{'y' if o.attempts == 1 else 'ies'})")


def run(post, args, graph: dict, files: dict) -> int:
    """post_workflow.py in chapter mode (--servers/--chapters): 0 on success, 1 failed, 2 bad input."""
    try:
        servers = check_servers(args.servers or args.server)
        spec = check_spec(args.chapters or "1")
        if "audio" not in files:
            raise FarmError("chapter mode needs --audio FILE: the speech decides the chapter boundaries. "
                            "Fix: give the workflow's speech with --audio.")
        parts, times, num_frames = resolve_chapters(spec, files["audio"], args.silence_db,
                                                    args.min_silence_ms)
        job_name = job_name_for(graph, files["audio"])
        out = args.out or Path(f"{job_name}.mp4")
        download_dir = out.parent / f"{out.stem}.chapters"
        download_dir.mkdir(parents=True, exist_ok=True)
    except (FarmError, OSError) as exc:
        _say(f"error: {exc}")
        return 2
    _say(f"{len(parts)} chapter(s) of job {job_name!r} on {len(servers)} server(s); boundaries: "
         + (", ".join(f"{p.start / FPS:.2f} s ({p.kind})" for p in parts[1:]) or "none"))
    render = make_render(post, graph, files, args.set, times, job_name, download_dir, _say)
    outcomes = run_chapters(parts, servers, render, attempts=args.attempts, log=_say)
    _report(parts, outcomes)
    if any(o.error for o in outcomes.values()):
        _say("error: some chapters failed (see above). Fix: repair or restart that server and run the same "
             "command again: finished chunks are resumed from the job folders.")
        return 1
    total = sum(p.frames for p in parts)
    try:
        stitch([outcomes[p.number].result for p in parts], out, total, files["audio"])
    except Exception as exc:  # noqa: BLE001 - one line for the user, not a traceback
        text = " ".join(str(exc).split())
        _say(f"error: {text}" if isinstance(exc, FarmError) else
             f"error: stitching the chapters failed: {text}")
        return 1
    frames = count_frames(out)
    _say(f"stitched {frames} frames (the chapters have {total}, the audio has {num_frames}) into {out}")
    if frames != total:
        _say(f"error: {out} has {frames} frames, not the chapters' {total}. Fix: run the same command again.")
        return 1
    print(f"saved {out}")
    return 0


def add_arguments(parser) -> None:
    """post_workflow.py's chapter-mode options."""
    farm = parser.add_argument_group("chapters on several servers")
    farm.add_argument("--servers", metavar="URL,URL,...",
                      help="post one chapter per server (instead of --server)")
    farm.add_argument("--chapters", metavar="auto|N|TIMES", help="cut the job into chapters: auto, a number, "
                      "or start times in seconds (\"61.2, 130.4\")")
    farm.add_argument("--silence-db", type=float, default=-40.0, help="chapters: silence threshold (dBFS)")
    farm.add_argument("--min-silence-ms", type=int, default=300, help="chapters: shortest pause for a cut")
    farm.add_argument("--attempts", type=int, default=3, help="chapters: tries per chapter, over all servers")


def main(post, args, files: dict) -> int:
    """Chapter mode's entry: the workflow and the file mapping are checked before any server is asked."""
    try:
        graph = json.loads(args.workflow.read_text())
        pinned = {i for i, n, _ in post.parse_sets(graph, args.set) if post._file_widget(graph[i], n)}
        post.plan_files(graph, files, pinned)
    except (ValueError, OSError) as exc:  # WorkflowError and JSONDecodeError are ValueErrors
        _say(f"error: {exc}")
        return 2
    return run(post, args, graph, files)
