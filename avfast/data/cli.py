"""Subcommands ``avfast make-demo-data``, ``avfast shots``, ``avfast dub`` and ``avfast separate``."""
from __future__ import annotations

import argparse
import sys
import time


def cmd_make_demo_data(args: argparse.Namespace) -> int:
    from avfast.data.synthetic import make_demo_data

    t0 = time.perf_counter()
    manifest = make_demo_data(args.out, num_movies=args.movies, shots_per_movie=args.shots, width=args.width,
                              height=args.height, fps=args.fps, sample_rate=args.sample_rate,
                              languages=tuple(args.languages.split(",")), voice=args.voice, seed=args.seed)
    lines = sum(1 for _ in open(manifest, encoding="utf-8"))
    print(f"wrote {lines} clips from {args.movies} movies to {manifest} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_shots(args: argparse.Namespace) -> int:
    from avfast.data.shots import build_manifest

    clips = build_manifest(args.videos, args.out, min_len=args.min_len, max_len=args.max_len, method=args.method,
                           threshold=args.threshold)
    print(f"wrote {len(clips)} shots ({args.min_len}-{args.max_len} s) from {len(args.videos)} video(s) to {args.out}")
    return 0


def cmd_dub(args: argparse.Namespace) -> int:
    from avfast.data.audio import save_audio
    from avfast.data.dubbing import DubPipeline, mux_track
    from avfast.data.errors import DataError

    try:
        pipe = DubPipeline(args.to, tts=args.tts, translator=args.mt, transcriber=args.asr, background=args.background,
                           sample_rate=args.sample_rate, max_speedup=args.max_speedup)
        track = int(args.track) if args.track and args.track.isdigit() else args.track
        wave, report = pipe.run(args.input, transcript=args.subs, translation=args.target_subs,
                                source_language=args.source_language, track=track)
    except (DataError, ImportError, RuntimeError, ValueError) as exc:
        print(f"avfast dub: {exc}", file=sys.stderr)
        return 1
    save_audio(args.out, wave, args.sample_rate, language=args.to)
    print(f"wrote {args.out}: {report['lines']} lines, {report['sped_up']} sped up, {report['cut']} cut to fit")
    if args.mux:
        mux_track(args.input, args.out, args.mux, args.to)
        print(f"wrote {args.mux} with the new '{args.to}' track")
    return 0


def cmd_separate(args: argparse.Namespace) -> int:
    from avfast.data.errors import DataError
    from avfast.data.separation import separate_manifest

    options = {"model": args.model, "repo": args.repo, "device": args.device} if args.separator == "demucs" else {}
    try:
        report = separate_manifest(args.manifest, separator=args.separator, out_dir=args.out_dir, output=args.output,
                                   sample_rate=args.sample_rate, **options)
    except (DataError, ImportError, FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"avfast separate: {exc}", file=sys.stderr)
        return 1
    print(f"{report['tracks']} primary tracks: {report['written']} separated, {report['skipped']} already done; "
          f"'separated' set on {report['clips']} clips of {report['manifest']}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-demo-data", help="write a small synthetic dubbed-movie dataset (mp4 + FLAC + manifest)")
    p.add_argument("out", help="output folder")
    p.add_argument("--movies", type=int, default=12)
    p.add_argument("--shots", type=int, default=4, help="shots per movie")
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--height", type=int, default=144)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--sample-rate", type=int, default=48000)
    p.add_argument("--languages", default="en,es,fr,ja", help="comma-separated; the first is the original")
    p.add_argument("--voice", choices=["auto", "espeak", "synthetic"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_demo_data)

    p = sub.add_parser("shots", help="detect shots in videos and write a manifest of the 3-12 s ones")
    p.add_argument("videos", nargs="+")
    p.add_argument("-o", "--out", required=True, help="manifest (JSON lines) to write")
    p.add_argument("--method", choices=["histogram", "pixel"], default="histogram")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--min-len", type=float, default=3.0)
    p.add_argument("--max-len", type=float, default=12.0)
    p.set_defaults(func=cmd_shots)

    p = sub.add_parser("dub", help="synthesise a dubbed audio track: subtitles -> (MT) -> TTS -> fit -> mix")
    p.add_argument("input", help="video or audio file")
    p.add_argument("--to", required=True, help="target language, e.g. es")
    p.add_argument("--subs", default=None, help="subtitles of the original language (.srt/.vtt)")
    p.add_argument("--target-subs", default=None, help="subtitles already in the target language")
    p.add_argument("--asr", default=None, help="transcriber plug-in when there are no subtitles (whisper)")
    p.add_argument("--mt", default=None, help="translator plug-in (argos, marian)")
    p.add_argument("--tts", default="espeak", help="TTS plug-in (default espeak)")
    p.add_argument("--background", default="duck", help="duck | none | demucs | path of a background track")
    p.add_argument("--track", default=None, help="source audio track: index or language")
    p.add_argument("--source-language", default=None)
    p.add_argument("--sample-rate", type=int, default=48000)
    p.add_argument("--max-speedup", type=float, default=1.6)
    p.add_argument("-o", "--out", required=True, help="dubbed track to write (.flac)")
    p.add_argument("--mux", default=None, help="also write a copy of the video with the new track")
    p.set_defaults(func=cmd_dub)

    p = sub.add_parser("separate", help="write speech-free primary tracks (vocals removed, other stems remixed) "
                                        "for the no_speech variant and set 'separated' in the manifest")
    p.add_argument("manifest")
    p.add_argument("--separator", default="demucs", help="separator plug-in (default demucs)")
    p.add_argument("--model", default="mdx_extra_q", help="demucs model (seed 001: mdx_extra_q)")
    p.add_argument("--repo", default=None, help="local folder of the demucs weights (or $AVFAST_DEMUCS_REPO)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--sample-rate", type=int, default=44100, help="rate of the written tracks (Demucs: 44100)")
    p.add_argument("--out-dir", default=None, help="folder of the .sep.flac files (default <manifest dir>/separated)")
    p.add_argument("-o", "--output", default=None, help="manifest to write (default: update MANIFEST in place)")
    p.set_defaults(func=cmd_separate)
