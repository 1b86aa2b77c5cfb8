"""Helpers for the relay's Python tests: the generated bindings, a real
`lanyard serve` process, Lanyard-framed notifications, and a listener that
records events.

Run by crates/lanyard-relay-ffi/tests/python.rs, which sets:
  LANYARD_FFI_BINDINGS  directory with lanyard_relay_ffi.py and the cdylib
  LANYARD_BIN           the `lanyard` binary
  LANYARD_MODEL_DIR     the Whisper model `lanyard serve` loads
"""

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.environ["LANYARD_FFI_BINDINGS"])
import lanyard_relay_ffi as ffi  # noqa: E402

LANYARD_BIN = os.environ["LANYARD_BIN"]
MODEL_DIR = os.environ["LANYARD_MODEL_DIR"]

# docs/protocol.md §1.2: version 1 in the high nibble, flags in the low one.
START, END, MORE = 0x1, 0x2, 0x4
CODEC_OPUS, CODEC_PCM16 = 1, 2
# The well-known 20 ms Opus silence frame (CELT, TOC 0xF8): real Opus that
# libopus decodes, so the server can process utterances made of it.
OPUS_SILENCE = b"\xf8\xff\xfe"
# One 20 ms PCM16 frame at 16 kHz: 320 samples.
PCM_SILENCE = bytes(640)


def notifications(seq, frame, codec, start=False, end=False, att_mtu=517):
    """The notifications that carry one codec frame (docs/protocol.md §1.3)."""
    room = min(att_mtu - 3, 512) - 5
    chunks = [frame[i:i + room] for i in range(0, len(frame), room)] or [b""]
    out = []
    for k, chunk in enumerate(chunks):
        flags = (START if start else 0) | (END if end else 0) | (MORE if k + 1 < len(chunks) else 0)
        out.append(bytes([0x10 | flags]) + struct.pack("<H", seq & 0xFFFF) + bytes([k, codec]) + chunk)
    return out


def feed(core, first_seq, count, frame, codec, start=False, end=False, batch=100, pause=0.05):
    """Feeds `count` frames from `first_seq`, START on the first if `start`,
    END on the last if `end`. Paced in batches: notification() drops rather
    than waits when the relay is behind, and these tests want every frame."""
    for i in range(count):
        seq = first_seq + i
        for n in notifications(seq, frame, codec, start=start and i == 0, end=end and i + 1 == count):
            core.notification(n)
        if (i + 1) % batch == 0:
            time.sleep(pause)


def spool_bytes(spool_dir):
    return sum(os.path.getsize(os.path.join(spool_dir, f)) for f in os.listdir(spool_dir) if f.endswith(".seg"))


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(spool_dir, server_url, token, **kw):
    return ffi.RelayConfig(spool_dir=spool_dir, server_url=server_url, token=token, **kw)


class Recorder(ffi.RelayListener):
    """Records every event; tests wait on them with `wait`."""

    def __init__(self, echo=None):
        self.events = []
        self.cond = threading.Condition()
        self.echo = echo

    def on_event(self, event):
        if self.echo:
            self.echo(event)
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def wait(self, pred, timeout, what):
        """Returns the first recorded event matching `pred`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.events:
                    if pred(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = [type(e).__name__ for e in self.events]
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; events so far: {kinds}")
                self.cond.wait(left)

    def of(self, kind):
        with self.cond:
            return [e for e in self.events if isinstance(e, kind)]


class Server:
    """A real `lanyard serve` on 127.0.0.1, with one registered device."""

    def __init__(self, port=0, data_dir=None):
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="lanyard-server-")
        self.port = port
        self.token = None
        self.proc = None
        self.url = None

    def add_device(self, name="ffi-test"):
        out = subprocess.run(
            [LANYARD_BIN, "device", "add", name, "--data-dir", self.data_dir],
            check=True, capture_output=True, text=True, timeout=60,
        )
        self.token = out.stdout.strip().splitlines()[-1].strip()
        return self.token

    def start(self):
        self.log = open(os.path.join(self.data_dir, "serve.log"), "w")
        self.proc = subprocess.Popen(
            [LANYARD_BIN, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data_dir,
             "--model-dir", MODEL_DIR],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"lanyard serve exited ({self.proc.wait()}); see {self.log.name}:\n"
                                     + open(self.log.name).read()[-4000:])
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "listening":
                self.url = f"http://{ev['addr']}"
                break
        else:
            raise AssertionError("lanyard serve did not report listening within 120 s")
        # Keep draining stdout so the server never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.proc.stdout.close()
            self.log.close()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def get(self, path):
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def utterance(self, utterance_id):
        return self.get(f"/v1/utterances/{utterance_id}")
