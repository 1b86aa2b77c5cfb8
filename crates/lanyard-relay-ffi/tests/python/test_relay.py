"""The relay through its FFI, as an app drives it, against a real `lanyard
serve`: the spool survives a killed process, audio leaves the spool only
after the server's `complete`, WillSuspend hands unfinished utterances to
the app as upload tasks, and the FFI's own contract (errors, non-blocking
notification(), drop reports) holds.

Run by tests/python.rs; see relaykit.py for the environment it sets.
"""

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

import relaykit
from relaykit import CODEC_OPUS, CODEC_PCM16, OPUS_SILENCE, PCM_SILENCE, Recorder, Server, ffi, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
E = ffi.RelayEvent
# A spool segment is closed at 1 MiB (lanyard_relay::spool::SEGMENT_BYTES).
SEGMENT_BYTES = 1 << 20
# Server states in which it holds the whole utterance.
DELIVERED = ("complete", "transcribed", "replied", "failed")

SERVER = None


def setUpModule():
    global SERVER
    SERVER = Server()
    SERVER.add_device()
    SERVER.start()


def tearDownModule():
    if SERVER:
        SERVER.cleanup()


class RelayTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="lanyard-ffi-")
        self.spool = os.path.join(self.tmp, "spool")
        self.cores = []

    def tearDown(self):
        for core in self.cores:
            try:
                core.shutdown()
            except ffi.RelayError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start(self, server_url, token, **kw):
        rec = Recorder()
        core = ffi.RelayCore(relaykit.config(self.spool, server_url, token, **kw), rec)
        self.cores.append(core)
        core.pendant_connected(ffi.Framing.LANYARD, None, 517)
        return core, rec


class SpoolSurvivesKill(RelayTest):
    def test_killed_relay_loses_nothing(self):
        # The first app process has no network (a closed port), so nothing
        # it hears can leave the phone before it is killed: whatever reaches
        # the server later came out of the spool.
        dead = f"http://127.0.0.1:{relaykit.free_port()}"
        before_kill = 100
        child = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "relay_child.py"), self.spool, dead, SERVER.token, str(before_kill)],
            stdout=subprocess.PIPE, text=True, cwd=HERE,
        )
        try:
            # Events arrive on the relay's thread, so "fed" may come first.
            lines = queue.Queue()
            threading.Thread(target=lambda: [lines.put(json.loads(l)) for l in child.stdout], daemon=True).start()
            utterance_id, fed = None, False
            deadline = time.monotonic() + 30
            while not (utterance_id and fed):
                try:
                    msg = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    self.fail(f"the child relay did not report its utterance and its frames (exit code {child.poll()})")
                utterance_id = msg.get("started", utterance_id)
                if "fed" in msg:
                    self.assertEqual(msg["dropped"], 0, "the child relay dropped notifications")
                    fed = True
            # Every frame handed to the kernel: 100 records of at least 640 bytes.
            wait_until(lambda: relaykit.spool_bytes(self.spool) >= before_kill * 640, 10, "the child's frames on disk")
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            child.stdout.close()

        # The next app process opens the same spool. The pendant carries on
        # with the same utterance (no START) and ends it.
        core, rec = self.start(SERVER.url, SERVER.token, silence_timeout_ms=10_000)
        after_kill = 50
        relaykit.feed(core, before_kill, after_kill, PCM_SILENCE, CODEC_PCM16, end=True)
        total = before_kill + after_kill

        ended = rec.wait(lambda e: isinstance(e, E.UTTERANCE_ENDED), 20, "UtteranceEnded")
        self.assertEqual(ended.id, utterance_id, "the restarted relay should adopt the open utterance")
        self.assertEqual(ended.frames, total)
        complete = rec.wait(lambda e: isinstance(e, E.COMPLETE) and e.id == utterance_id, 30, "Complete")
        self.assertEqual(complete.frames, total)
        self.assertEqual(core.dropped_notifications(), 0)

        u = SERVER.utterance(utterance_id)
        self.assertEqual(u["frames"], total, u)
        self.assertIn(u["state"], DELIVERED, u)


class AckedAudioLeavesTheSpool(RelayTest):
    def test_complete_then_spool_shrinks(self):
        core, rec = self.start(SERVER.url, SERVER.token, silence_timeout_ms=10_000)
        # More than one 1 MiB segment of PCM, so that a closed segment holds
        # only this utterance and can be deleted once it is complete.
        frames = 1700
        relaykit.feed(core, 0, frames - 1, PCM_SILENCE, CODEC_PCM16, start=True)
        started = rec.wait(lambda e: isinstance(e, E.UTTERANCE_STARTED), 10, "UtteranceStarted")
        wait_until(lambda: relaykit.spool_bytes(self.spool) >= (frames - 1) * 640, 20, "all frames on disk")
        segments = [f for f in os.listdir(self.spool) if f.endswith(".seg")]
        self.assertGreaterEqual(len(segments), 2, segments)
        peak = relaykit.spool_bytes(self.spool)
        # Nothing leaves the spool before the server's `complete`, however
        # much it has acknowledged.
        self.assertFalse(rec.of(E.COMPLETE))

        relaykit.feed(core, frames - 1, 1, PCM_SILENCE, CODEC_PCM16, end=True)
        complete = rec.wait(lambda e: isinstance(e, E.COMPLETE), 60, "Complete")
        self.assertEqual(complete.id, started.id)
        self.assertEqual(complete.frames, frames)
        ended = rec.of(E.UTTERANCE_ENDED)
        self.assertEqual([e.id for e in ended], [started.id])
        self.assertLessEqual(ended[0].at_ms, complete.at_ms)

        # The spool deletes before it reports `complete`.
        after = relaykit.spool_bytes(self.spool)
        self.assertLess(after, peak)
        self.assertLess(after, SEGMENT_BYTES, "the closed segment should be gone")

        u = SERVER.utterance(started.id)
        self.assertEqual(u["frames"], frames, u)
        self.assertIn(u["state"], DELIVERED, u)
        self.assertEqual(core.dropped_notifications(), 0)


class WillSuspendHandsOffUploads(RelayTest):
    def test_upload_task_on_will_suspend(self):
        # The server is not up yet (its port is reserved but closed), so the
        # utterance cannot be streamed; when the app is about to be
        # suspended the relay must hand it over as an upload task.
        server = Server(port=relaykit.free_port())
        self.addCleanup(server.cleanup)
        server.add_device()
        url = f"http://127.0.0.1:{server.port}"
        core, rec = self.start(url, server.token, silence_timeout_ms=10_000)
        frames = 50
        relaykit.feed(core, 0, frames, OPUS_SILENCE, CODEC_OPUS, start=True, end=True)
        ended = rec.wait(lambda e: isinstance(e, E.UTTERANCE_ENDED), 10, "UtteranceEnded")
        self.assertEqual(ended.frames, frames)

        core.set_lifecycle(ffi.Lifecycle.BACKGROUND(remaining_ms=5_000))
        core.set_lifecycle(ffi.Lifecycle.WILL_SUSPEND())
        task = rec.wait(lambda e: isinstance(e, E.UPLOAD_TASK), 10,
                        "UploadTask after WillSuspend (is the background-budget planner wired into host::run?)")
        self.assertEqual(task.id, ended.id)
        self.assertTrue(os.path.isfile(task.path), task.path)
        # The end of its time-to-live goes with it: the server refuses it after.
        self.assertRegex(task.url, r"[?&]expires_ms=[0-9]{13}")

        # The app's background upload, once the network is back.
        server.start()
        with open(task.path, "rb") as f:
            body = f.read()
        req = urllib.request.Request(task.url, data=body, method=task.method,
                                     headers={h.name: h.value for h in task.headers})
        with urllib.request.urlopen(req, timeout=30) as resp:
            ok = 200 <= resp.status < 300
            answer = json.loads(resp.read())
        self.assertTrue(ok)
        self.assertEqual(answer["frames"], frames, answer)
        core.upload_finished(task.id, ok)

        u = server.utterance(task.id)
        self.assertEqual(u["frames"], frames, u)
        self.assertIn(u["state"], DELIVERED, u)
        # The relay treats the upload as delivery: it stops owing the audio.
        rec.wait(lambda e: isinstance(e, (E.COMPLETE, E.DISCARDED)) and e.id == task.id, 30,
                 "Complete after upload_finished")


class FfiContract(RelayTest):
    """The FFI's own promises; no server needed."""

    def dead_url(self):
        return f"http://127.0.0.1:{relaykit.free_port()}"

    def test_config_errors_say_what_to_do(self):
        with self.assertRaises(ffi.RelayError.InvalidConfig) as cm:
            ffi.RelayCore(relaykit.config(self.spool, "ftp://x", "t"), Recorder())
        self.assertIn("http(s)://host[:port]", str(cm.exception))
        with self.assertRaises(ffi.RelayError.InvalidConfig):
            ffi.RelayCore(relaykit.config(self.spool, self.dead_url(), ""), Recorder())
        with self.assertRaises(ffi.RelayError.InvalidConfig) as cm:
            ffi.RelayCore(relaykit.config(self.spool, self.dead_url(), "t", push_platform="apns"), Recorder())
        self.assertIn("push_token", str(cm.exception))

    def test_one_relay_per_spool(self):
        core, _ = self.start(self.dead_url(), "t")
        with self.assertRaises(ffi.RelayError.SpoolInUse):
            ffi.RelayCore(relaykit.config(self.spool, self.dead_url(), "t"), Recorder())
        core.shutdown()
        # The lock goes with the relay: a successor may open the spool.
        self.start(self.dead_url(), "t")

    def test_argument_errors(self):
        core, _ = self.start(self.dead_url(), "t")
        with self.assertRaises(ffi.RelayError.InvalidArgument):
            core.upload_finished("not-a-uuid", True)
        with self.assertRaises(ffi.RelayError.InvalidArgument):
            core.pendant_connected(ffi.Framing.OMI, 99, 185)
        with self.assertRaises(ffi.RelayError.InvalidArgument):
            core.pendant_connected(ffi.Framing.OMI, None, 185)
        core.pendant_connected(ffi.Framing.OMI, 21, 185)

    def test_shutdown_ends_the_utterance_and_reports_stopped(self):
        core, rec = self.start(self.dead_url(), "t", silence_timeout_ms=60_000)
        relaykit.feed(core, 0, 10, OPUS_SILENCE, CODEC_OPUS, start=True)
        rec.wait(lambda e: isinstance(e, E.UTTERANCE_STARTED), 10, "UtteranceStarted")
        core.shutdown()
        ended = rec.wait(lambda e: isinstance(e, E.UTTERANCE_ENDED), 1, "UtteranceEnded")
        self.assertEqual(ended.frames, 10)
        stopped = rec.of(E.STOPPED)
        self.assertEqual(len(stopped), 1)
        self.assertIsNone(stopped[0].error)
        self.assertIsInstance(rec.events[-1], E.STOPPED, "Stopped is the last event")
        core.shutdown()  # again: same result
        with self.assertRaises(ffi.RelayError.Stopped):
            core.set_lifecycle(ffi.Lifecycle.FOREGROUND())
        # notification() after the end neither blocks nor raises; it counts.
        core.notification(b"\x11\x00\x00\x00\x01")
        self.assertEqual(core.dropped_notifications(), 1)

    def test_notification_spools_on_the_callers_thread_even_with_a_stalled_worker(self):
        # A listener that breaks the rule and blocks in on_event stalls the
        # relay's only worker: the next best thing to a stuck relay. The BLE
        # thread must not notice: notification() spools on the caller's
        # thread, so every frame is kept and none is dropped or queued.
        release = threading.Event()
        stalled = threading.Event()

        class Blocking(Recorder):
            def on_event(self, event):
                super().on_event(event)
                if isinstance(event, E.UTTERANCE_STARTED):
                    stalled.set()
                    release.wait(30)

        rec = Blocking()
        core = ffi.RelayCore(relaykit.config(self.spool, self.dead_url(), "t", silence_timeout_ms=60_000), rec)
        self.cores.append(core)
        frame = bytes(300)
        core.notification(relaykit.notifications(0, frame, CODEC_PCM16, start=True)[0])
        self.assertTrue(stalled.wait(10), "the relay never reported the utterance")
        n = 3000
        slowest = 0.0
        for seq in range(1, n + 1):
            t = time.perf_counter()
            core.notification(relaykit.notifications(seq, frame, CODEC_PCM16)[0])
            slowest = max(slowest, time.perf_counter() - t)
        # A call that waited for the worker would wait for `release`; a
        # write() takes microseconds (the bound is loose for slow CI).
        self.assertLess(slowest, 0.5, f"a notification() call took {slowest * 1000:.1f} ms")
        self.assertEqual(core.dropped_notifications(), 0)
        release.set()
        core.shutdown()
        ended = rec.wait(lambda e: isinstance(e, E.UTTERANCE_ENDED), 1, "UtteranceEnded")
        self.assertEqual(ended.frames, n + 1, "every notification handed over is spooled")

if __name__ == "__main__":
    unittest.main()
