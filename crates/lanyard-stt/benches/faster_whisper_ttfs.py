#!/usr/bin/env python3
"""faster-whisper's side of the TTFS benchmark (benches/ttfs.rs).

What it measures: for each utterance, the wall-clock time of faster-whisper's
*default* transcription, ``model.transcribe(audio)`` with every option left at
its default (beam 5, the audio padded to the standard 30 s window, VAD off,
temperature fallback, condition_on_previous_text), consumed to the end of the
segment generator, because faster-whisper decodes lazily. The clock starts
with the complete utterance in memory (the end of speech, as the server sees
it) and stops when the text is known. Log-mel features are included, model
loading is not; one untimed call on the first file warms the model up first.

The model is the same CTranslate2 directory that lanyard-stt loads, computed
in float32 on the CPU with ``--cpu-threads`` intra-op threads (the Rust bench
passes its own engine's count, so both sides get the same cores). Nothing is
downloaded: the model path is local and the Hugging Face hub is set offline.

With ``--same-decode FLOOR_SECS BEAM`` it also times, per utterance, the decode
lanyard-stt's row (a) does, on the wheel's own CTranslate2 build: the audio
padded with silence to at least FLOOR_SECS, log-mel (faster-whisper's
feature extractor), one encode and one beam search of width BEAM with
``max_length`` bounded by the audio (8 tokens a second plus 16), blank and
non-speech tokens suppressed, no fallback. Only the CTranslate2 build
differs from lanyard's, which is how ttfs.rs compares CPU backends: the wheel
computes float32 matrix products with oneDNN on AMD and Intel MKL on Intel
CPUs (``CT2_USE_MKL`` overrides it; ``CT2_VERBOSE=1`` logs the choice).

Usage (ttfs.rs runs it; by hand it is)::

    pip install faster-whisper
    python3 faster_whisper_ttfs.py [--cpu-threads N] [--same-decode FLOOR BEAM] [--seed N] MODEL_DIR FILE.pcm...

Each FILE is raw 16 kHz mono signed 16-bit little-endian PCM. Prints one JSON
object on stdout::

    {"faster_whisper": "1.2.1", "ctranslate2": "4.8.5", "cpu_threads": 2,
     "results": [{"file": ..., "audio_secs": ..., "secs": ..., "text": ...,
                  "same_secs": ..., "same_text": ...}]}

(``same_*`` only with ``--same-decode``.)

Exit status 3 (with install instructions on stderr) when faster_whisper cannot
be imported, 2 on bad usage.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:
    import numpy as np
    import ctranslate2
    import faster_whisper
    from faster_whisper import WhisperModel
except ImportError as e:  # pragma: no cover - depends on the machine
    print(
        f"cannot import faster_whisper ({e}): install it with `pip install faster-whisper` "
        "(it brings ctranslate2, tokenizers and numpy; no model is downloaded, "
        "the bench passes the local model directory)",
        file=sys.stderr,
    )
    sys.exit(3)


def read_pcm(path):
    """Raw s16le 16 kHz mono PCM as float32 in [-1, 1], as lanyard-stt sees it."""
    data = np.fromfile(path, dtype="<i2")
    return data.astype(np.float32) / 32768.0


def transcribe(model, audio):
    started = time.perf_counter()
    segments, _info = model.transcribe(audio)
    text = " ".join(segment.text.strip() for segment in segments).strip()
    return time.perf_counter() - started, text


# Whisper's English-only start of transcript and no-timestamps tokens; the
# multilingual models take the language and task tokens in between.
def prompt_tokens(model_dir, multilingual):
    from faster_whisper.tokenizer import Tokenizer
    import tokenizers
    hf = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok = Tokenizer(hf, multilingual, task="transcribe", language="en" if multilingual else None)
    return tok.sot_sequence + [tok.no_timestamps], tok


def same_decode(model, extractor, tok, prompt, audio, floor_secs, beam):
    """Row (a)'s decode on the wheel's CTranslate2: see the module doc."""
    started = time.perf_counter()
    floor = int(floor_secs * 16000)
    padded = audio if len(audio) >= floor else np.concatenate([audio, np.zeros(floor - len(audio), np.float32)])
    features = extractor(padded)[:, : len(padded) // 160]
    encoded = model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])))
    max_length = min(int(np.ceil(len(audio) / 16000 * 8)) + 16, 448)
    result = model.model.generate(encoded, [prompt], beam_size=beam, max_length=max_length,
                                  suppress_blank=True, suppress_tokens=[-1])[0]
    text = tok.decode([t for t in result.sequences_ids[0] if t < tok.eot]).strip()
    return time.perf_counter() - started, text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-threads", type=int, default=0,
                        help="CTranslate2 intra-op threads (0: its default)")
    parser.add_argument("--same-decode", nargs=2, metavar=("FLOOR_SECS", "BEAM"),
                        help="also time lanyard's row (a) decode on this CTranslate2 build")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed CTranslate2's sampling (the temperature fallback), for a reproducible run")
    parser.add_argument("model_dir")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()

    if args.seed is not None:
        ctranslate2.set_random_seed(args.seed)
    model = WhisperModel(args.model_dir, device="cpu", compute_type="float32",
                         cpu_threads=args.cpu_threads)
    audios = [read_pcm(path) for path in args.files]
    transcribe(model, audios[0])  # warm-up, not reported
    same = None
    if args.same_decode:
        floor_secs, beam = float(args.same_decode[0]), int(args.same_decode[1])
        prompt, tok = prompt_tokens(args.model_dir, model.model.is_multilingual)
        same = lambda audio: same_decode(model, model.feature_extractor, tok, prompt, audio, floor_secs, beam)
        same(audios[0])  # warm-up, not reported

    results = []
    for path, audio in zip(args.files, audios):
        secs, text = transcribe(model, audio)
        result = {
            "file": path,
            "audio_secs": len(audio) / 16000.0,
            "secs": secs,
            "text": text,
        }
        if same:
            result["same_secs"], result["same_text"] = same(audio)
        results.append(result)
    json.dump({
        "faster_whisper": faster_whisper.__version__,
        "ctranslate2": ctranslate2.__version__,
        "cpu_threads": args.cpu_threads,
        "results": results,
    }, sys.stdout)
    print()


if __name__ == "__main__":
    main()
