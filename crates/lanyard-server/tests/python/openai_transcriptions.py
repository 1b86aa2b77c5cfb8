"""Drives a running Lanyard server's POST /v1/audio/transcriptions with the
official `openai` Python package, in every response_format and with
timestamp_granularities, and checks each answer's shape as OpenAI documents
it. Run by `tests/transcriptions.rs`, which starts the server and checks the
text against the model's own transcription; it reads what this script
printed (one JSON object on stdout).

Environment: LANYARD_URL (http://127.0.0.1:PORT), LANYARD_TOKEN (a device
token), AUDIO (a WAV file of speech).
"""

import json
import os
import re
import sys

try:
    import openai
except ImportError:
    sys.exit("the `openai` Python package is missing: run scripts/setup (or `python3 -m pip install openai`)")

URL = os.environ["LANYARD_URL"]
AUDIO = os.environ["AUDIO"]
client = openai.OpenAI(base_url=URL + "/v1", api_key=os.environ["LANYARD_TOKEN"], max_retries=0, timeout=120)


def transcribe(**kwargs):
    with open(AUDIO, "rb") as f:
        return client.audio.transcriptions.create(model="whisper-1", file=f, **kwargs)


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def check_segments(segments, text, duration):
    check(segments, f"no segments for {text!r}")
    for i, s in enumerate(segments):
        check(s.id == i, f"segment ids count from 0: {s}")
        check(0 <= s.start <= s.end <= duration + 0.01, f"segment times within the audio: {s}")
        check(s.seek >= 0 and isinstance(s.tokens, list), f"seek and tokens: {s}")
        for field in ("temperature", "avg_logprob", "compression_ratio", "no_speech_prob"):
            check(isinstance(getattr(s, field), float), f"{field} is a number: {s}")
    check(" ".join(s.text.strip() for s in segments) == text, "the segments' texts make the text")


def parse_cues(body, sep):
    """(start, end, text) of each cue; the times in `HH:MM:SS<sep>mmm`."""
    stamp = r"(\d{2,}):(\d{2}):(\d{2})" + re.escape(sep) + r"(\d{3})"
    cues = []
    for block in body.strip("\n").split("\n\n") if body.strip() else []:
        lines = block.split("\n")
        m = re.fullmatch(stamp + " --> " + stamp, lines[-2])
        check(m, f"a cue's time line: {lines[-2]!r}")
        g = [int(x) for x in m.groups()]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        cues.append((lines[:-2], start, end, lines[-1]))
    return cues


def main():
    out = {}
    plain = transcribe(response_format="json")
    check(isinstance(plain, openai.types.audio.Transcription), f"json: {type(plain)}")
    text = plain.text
    check(text, "json: speech gives text")
    out["json"] = text

    out["text"] = transcribe(response_format="text")
    check(isinstance(out["text"], str) and out["text"].strip() == text, f"text: {out['text']!r}")

    verbose = transcribe(response_format="verbose_json")
    check(isinstance(verbose, openai.types.audio.TranscriptionVerbose), f"verbose_json: {type(verbose)}")
    check((verbose.language, verbose.text) == ("english", text), f"verbose_json: {verbose}")
    check(verbose.words is None, "verbose_json: words only when asked")
    check_segments(verbose.segments, text, verbose.duration)
    check(verbose.model_extra.get("task") == "transcribe", f"verbose_json task: {verbose.model_extra}")
    out["duration"] = verbose.duration
    out["segments"] = [[s.start, s.end, s.text] for s in verbose.segments]

    words = transcribe(response_format="verbose_json", timestamp_granularities=["word"])
    check(words.segments is None, "word granularity alone: no segments")
    check(isinstance(words.words, list), f"word granularity: a words list: {words}")
    for w in words.words:
        check(w.word.strip() == w.word and w.word, f"a word without spaces: {w}")
        check(0 <= w.start <= w.end <= words.duration + 0.01, f"word times within the audio: {w}")
    out["words"] = [[w.word, w.start, w.end] for w in words.words]
    both = transcribe(response_format="verbose_json", timestamp_granularities=["word", "segment"])
    check_segments(both.segments, text, both.duration)
    check(isinstance(both.words, list), "both granularities: words too")

    srt = transcribe(response_format="srt")
    cues = parse_cues(srt, ",")
    check([c[0] for c in cues] == [[str(i + 1)] for i in range(len(cues))], f"srt cues numbered from 1: {srt!r}")
    check(" ".join(c[3] for c in cues) == text, f"srt: the cues make the text: {srt!r}")
    out["srt"] = srt

    vtt = transcribe(response_format="vtt")
    check(vtt.startswith("WEBVTT\n\n"), f"vtt header: {vtt!r}")
    cues = parse_cues(vtt[len("WEBVTT\n\n"):], ".")
    check(all(c[0] == [] for c in cues), f"vtt cues carry no numbers: {vtt!r}")
    check(" ".join(c[3] for c in cues) == text, f"vtt: the cues make the text: {vtt!r}")
    out["vtt"] = vtt

    # What OpenAI refuses, refused the same way: a 400 the SDK raises.
    for kwargs, says in [
        (dict(response_format="json", timestamp_granularities=["word"]), "verbose_json"),
        (dict(response_format="srt", timestamp_granularities=["segment"]), "verbose_json"),
        (dict(response_format="csv"), "verbose_json, srt or vtt"),
        (dict(response_format="verbose_json", timestamp_granularities=["letter"]), "word"),
    ]:
        try:
            transcribe(**kwargs)
        except openai.BadRequestError as e:
            check(says in str(e), f"{kwargs}: the message says what to send: {e}")
        else:
            raise AssertionError(f"{kwargs} was served")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
