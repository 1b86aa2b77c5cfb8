"""A relay in a process of its own, for the kill test: an app that the OS
kills mid-utterance.

    python3 relay_child.py SPOOL_DIR SERVER_URL TOKEN FRAMES

Starts a RelayCore on SPOOL_DIR, feeds FRAMES Lanyard-framed PCM16 frames
(the first with START, none with END), prints {"started": ID} when the utterance
starts and {"fed": FRAMES, "dropped": N} when all are handed over, and waits to be killed.
"""

import json
import sys
import time

import relaykit
from relaykit import ffi


def main():
    spool_dir, server_url, token, frames = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    def echo(event):
        if isinstance(event, ffi.RelayEvent.UTTERANCE_STARTED):
            print(json.dumps({"started": event.id}), flush=True)

    # A long silence timeout: the utterance is still open when the kill comes.
    config = relaykit.config(spool_dir, server_url, token, silence_timeout_ms=60_000)
    core = ffi.RelayCore(config, relaykit.Recorder(echo))
    core.pendant_connected(ffi.Framing.LANYARD, None, 517)
    relaykit.feed(core, 0, frames, relaykit.PCM_SILENCE, relaykit.CODEC_PCM16, start=True)
    print(json.dumps({"fed": frames, "dropped": core.dropped_notifications()}), flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
