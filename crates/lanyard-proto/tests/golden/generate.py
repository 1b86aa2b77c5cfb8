#!/usr/bin/env python3
"""Writes the golden vectors in this folder from the documented layouts.

This is an independent implementation of docs/protocol.md, written from the
diagrams and not from the Rust code, so that `tests/golden.rs` checks the Rust
encoders and decoders against the spec rather than against themselves. Each
vector names what it covers; short ones are also worked out by hand in their
`why` field. Run it from anywhere: `python3 generate.py`. The output is
deterministic, so a diff after running it means the spec or this script
changed.
"""

import json
import os
import struct
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------- Lanyard BLE
START, END, MORE, RESERVED = 0x1, 0x2, 0x4, 0x8
CODECS = {"opus16k20ms": 1, "pcm16k": 2}


def ble(seq, frag, codec, start=False, end=False, more=False, payload=b""):
    flags = (START if start else 0) | (END if end else 0) | (MORE if more else 0)
    return bytes([0x10 | flags]) + struct.pack("<H", seq) + bytes([frag, CODECS[codec]]) + payload


def ble_vec(name, why, seq, frag, codec, start=False, end=False, more=False, payload=b""):
    return {
        "name": name,
        "why": why,
        "hex": ble(seq, frag, codec, start, end, more, payload).hex(),
        "seq": seq,
        "fragment": frag,
        "codec": codec,
        "start": start,
        "end": end,
        "more": more,
        "payload": payload.hex(),
    }


def ble_packetize(seq, codec, start, end, data, att_mtu):
    room = min(att_mtu - 3, 512) - 5
    chunks = [data[i:i + room] for i in range(0, len(data), room)] or [b""]
    return [
        ble(seq, i, codec, start, end, i != len(chunks) - 1, c).hex() for i, c in enumerate(chunks)
    ]


def pattern(n, offset=0):
    return bytes((offset + i) % 256 for i in range(n))


# ---------------------------------------------------------------- Omi
def omi(index, sub, payload):
    return struct.pack("<HB", index, sub) + payload


def omi_packetize(first, frame, att_mtu):
    room = min(max(att_mtu, 23) - 3, 512) - 3
    chunks = [frame[i:i + room] for i in range(0, len(frame), room)] or [b""]
    return [omi((first + i) % 65536, i, c).hex() for i, c in enumerate(chunks)]


# ---------------------------------------------------------------- Ogg
def ogg_crc(data):
    crc = 0
    for b in data:
        crc ^= b << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else (crc << 1)
            crc &= 0xFFFFFFFF
    return crc


def ogg_page(header_type, granule, serial, seq, packets):
    lacing = []
    for p in packets:
        n = len(p)
        lacing += [255] * (n // 255) + [n % 255]
    assert len(lacing) <= 255
    head = b"OggS" + bytes([0, header_type]) + struct.pack("<qIII", granule, serial, seq, 0)
    head += bytes([len(lacing)] + lacing)
    page = head + b"".join(packets)
    crc = ogg_crc(page)
    return page[:22] + struct.pack("<I", crc) + page[26:]


def main():
    out = {}

    # Notifications: every flag, both codecs, sequence wrap, empty payload.
    out["ble_notifications.json"] = {
        "vectors": [
            ble_vec("opus_start_single", "byte0 = ver 1 << 4 | START = 0x11; seq 0 = 00 00; frag 0; codec 1",
                    0, 0, "opus16k20ms", start=True, payload=bytes.fromhex("fcff fe")),
            ble_vec("opus_middle_frame", "no flags: byte0 0x10; seq 0x1234 little-endian = 34 12",
                    0x1234, 0, "opus16k20ms", payload=bytes.fromhex("0b0c0d")),
            ble_vec("opus_end", "END: byte0 0x12", 0x0102, 0, "opus16k20ms", end=True, payload=b"\x99"),
            ble_vec("more_fragment_0", "MORE: byte0 0x14", 7, 0, "opus16k20ms", more=True, payload=b"\x01\x02"),
            ble_vec("start_end_more", "all three flags: byte0 0x17; fragment 3",
                    7, 3, "opus16k20ms", start=True, end=True, more=True, payload=b"\x03"),
            ble_vec("seq_ffff", "last sequence number before the wrap: ff ff", 0xFFFF, 0, "opus16k20ms",
                    payload=b"\xaa"),
            ble_vec("seq_wrapped_0", "the frame after 0xffff is 0: 00 00", 0x0000, 0, "opus16k20ms",
                    payload=b"\xbb"),
            ble_vec("pcm_frame", "codec id 2 = PCM16; payload two samples 0x0001, 0xffff (LE)", 0x0010, 0,
                    "pcm16k", payload=bytes.fromhex("0100ffff")),
            ble_vec("empty_end", "an empty END frame: header only, 5 bytes", 5, 0, "opus16k20ms", end=True),
            ble_vec("fragment_255", "the highest fragment index, last fragment", 9, 255, "pcm16k",
                    payload=b"\x00"),
        ],
        "errors": [
            {"name": "empty", "hex": "", "error": "too_short"},
            {"name": "four_bytes", "hex": "11000000", "error": "too_short"},
            {"name": "version_0", "hex": "0100000001", "error": "version"},
            {"name": "version_2", "hex": "2100000001", "error": "version"},
            {"name": "reserved_flag", "hex": "1800000001", "error": "reserved_flag"},
            {"name": "codec_0", "hex": "1000000000", "error": "unknown_codec"},
            {"name": "codec_3", "hex": "1000000003", "error": "unknown_codec"},
        ],
    }

    opus80 = pattern(80)
    pcm640 = pattern(640, 0x40)
    out["ble_packetize.json"] = {
        "why": "MTU 23 leaves 23 - 3 (ATT) - 5 (header) = 15 payload bytes a notification; "
               "MTU 517 is capped at 512-byte notifications, 507 payload bytes",
        "vectors": [
            {"name": "opus80_mtu23", "why": "80 = 5 x 15 + 5: six notifications, fragments 0-5, MORE on 0-4",
             "att_mtu": 23, "seq": 0x0203, "codec": "opus16k20ms", "start": True, "end": False,
             "data": opus80.hex(), "notifications": ble_packetize(0x0203, "opus16k20ms", True, False, opus80, 23)},
            {"name": "pcm640_mtu23", "why": "640 = 42 x 15 + 10: 43 notifications",
             "att_mtu": 23, "seq": 0xFFFF, "codec": "pcm16k", "start": False, "end": True,
             "data": pcm640.hex(), "notifications": ble_packetize(0xFFFF, "pcm16k", False, True, pcm640, 23)},
            {"name": "opus80_mtu185", "why": "iOS's usual MTU: 177 payload bytes, one notification",
             "att_mtu": 185, "seq": 1, "codec": "opus16k20ms", "start": True, "end": True,
             "data": opus80.hex(), "notifications": ble_packetize(1, "opus16k20ms", True, True, opus80, 185)},
            {"name": "pcm640_mtu517", "why": "507 + 133: two notifications of 512 and 138 bytes",
             "att_mtu": 517, "seq": 2, "codec": "pcm16k", "start": False, "end": False,
             "data": pcm640.hex(), "notifications": ble_packetize(2, "pcm16k", False, False, pcm640, 517)},
            {"name": "empty_mtu23", "why": "an empty frame is one header-only notification",
             "att_mtu": 23, "seq": 3, "codec": "opus16k20ms", "start": False, "end": True,
             "data": "", "notifications": ble_packetize(3, "opus16k20ms", False, True, b"", 23)},
        ],
    }
    assert len(out["ble_packetize.json"]["vectors"][0]["notifications"]) == 6
    assert len(out["ble_packetize.json"]["vectors"][1]["notifications"]) == 43
    assert len(bytes.fromhex(out["ble_packetize.json"]["vectors"][3]["notifications"][0])) == 512

    out["ble_control.json"] = {
        "vectors": [
            {"name": "start_stream", "hex": "01", "command": {"op": "start_stream"}},
            {"name": "stop_stream", "hex": "02", "command": {"op": "stop_stream"}},
            {"name": "set_codec_opus", "hex": "0301", "command": {"op": "set_codec", "codec": "opus16k20ms"}},
            {"name": "set_codec_pcm", "hex": "0302", "command": {"op": "set_codec", "codec": "pcm16k"}},
            {"name": "sync_clock", "why": "1700000000123 = 0x018bcfe5687b, little-endian over 8 bytes: 7b 68 e5 cf 8b 01 00 00",
             "hex": "04" + struct.pack("<Q", 1700000000123).hex(),
             "command": {"op": "sync_clock", "unix_ms": 1700000000123}},
            {"name": "sync_clock_max", "hex": "04" + "ff" * 8,
             "command": {"op": "sync_clock", "unix_ms": 2**64 - 1}},
        ],
        "errors": [
            {"name": "empty", "hex": "", "error": "empty"},
            {"name": "unknown_opcode", "hex": "05", "error": "unknown_opcode"},
            {"name": "opcode_0", "hex": "00", "error": "unknown_opcode"},
            {"name": "start_with_argument", "hex": "0100", "error": "bad_length"},
            {"name": "set_codec_no_argument", "hex": "03", "error": "bad_length"},
            {"name": "set_codec_unknown", "hex": "0309", "error": "unknown_codec"},
            {"name": "sync_clock_short", "hex": "04" + "00" * 7, "error": "bad_length"},
        ],
    }
    assert out["ble_control.json"]["vectors"][4]["hex"] == "047b68e5cf8b010000"

    # Omi: header parse vectors, then codec 21 frames cut by sub-index.
    out["omi_notifications.json"] = {
        "vectors": [
            {"name": "first_piece", "why": "index 0x0102 LE = 02 01, sub-index 0",
             "hex": omi(0x0102, 0, b"\xfc\x01").hex(), "index": 0x0102, "sub_index": 0, "payload": "fc01"},
            {"name": "continuation", "hex": omi(0x0103, 1, b"\x02").hex(), "index": 0x0103, "sub_index": 1,
             "payload": "02"},
            {"name": "index_ffff", "hex": omi(0xFFFF, 0, b"").hex(), "index": 0xFFFF, "sub_index": 0,
             "payload": ""},
        ],
        "errors": [
            {"name": "empty", "hex": "", "error": "too_short"},
            {"name": "two_bytes", "hex": "0000", "error": "too_short"},
        ],
    }
    f1, f2, f3 = pattern(80, 0x10), pattern(40, 0x80), pattern(17, 0xC0)
    stream = omi_packetize(0xFFFD, f1, 23) + omi_packetize(2, f2, 23) + omi_packetize(5, f3, 23)
    out["omi_packetize.json"] = {
        "why": "Omi codec 21 = Opus 16 kHz, 320-sample (20 ms) frames. MTU 23 leaves 23 - 3 - 3 = 17 "
               "payload bytes. Packet indices count notifications and wrap after 0xffff.",
        "codec_id": 21,
        "att_mtu": 23,
        "frames": [
            {"first_index": 0xFFFD, "data": f1.hex(),
             "why": "80 = 4 x 17 + 12: indices fffd fffe ffff 0000 0001, sub-indices 0-4"},
            {"first_index": 2, "data": f2.hex(), "why": "40 = 2 x 17 + 6: indices 2-4"},
            {"first_index": 5, "data": f3.hex(), "why": "exactly one full notification"},
        ],
        "notifications": stream,
    }
    assert len(stream) == 9 and stream[3][:6] == "000003"

    # Wire: binary messages.
    out["wire_binary.json"] = {
        "vectors": [
            {"name": "audio", "why": "01 | handle 7 = 07000000 | seq 0x01020304 = 04030201 | frame",
             "hex": "01" + "07000000" + "04030201" + "fcfffe", "kind": "audio", "handle": 7,
             "seq": 0x01020304, "frame": "fcfffe"},
            {"name": "audio_empty_frame", "hex": "01" + "ffffffff" + "00000000", "kind": "audio",
             "handle": 0xFFFFFFFF, "seq": 0, "frame": ""},
            {"name": "ack", "why": "02 | handle 7 | next 50 = 32000000",
             "hex": "02" + "07000000" + "32000000", "kind": "ack", "handle": 7, "next": 50},
            {"name": "ack_max", "hex": "02" + "00000000" + "ffffffff", "kind": "ack", "handle": 0,
             "next": 0xFFFFFFFF},
        ],
        "errors": [
            {"name": "empty", "hex": "", "error": "empty"},
            {"name": "unknown_kind", "hex": "03", "error": "unknown_kind"},
            {"name": "audio_short", "hex": "0107000000040302", "error": "too_short"},
            {"name": "ack_short", "hex": "020700000032", "error": "ack_length"},
            {"name": "ack_long", "hex": "02070000003200000000", "error": "ack_length"},
            {"name": "audio_too_large", "hex": "01" + "00" * 8 + "00" * 3841, "error": "frame_too_large"},
        ],
    }

    # Wire: JSON text, exact. tests/golden.rs holds the matching Rust values.
    u = "0190d3a4-5b6c-7d8e-9f00-112233445566"
    out["wire_json.json"] = {
        "why": "Exact text: field order as listed, no whitespace, tag first. Codec names are opus16k20ms and pcm16k.",
        "client": [
            {"name": "open", "json": '{"type":"open","utterance":"%s","handle":7,"codec":"opus16k20ms"}' % u},
            {"name": "open_pcm", "json": '{"type":"open","utterance":"%s","handle":0,"codec":"pcm16k"}' % u},
            # No start marker opened it (an Omi pendant): stored without a
            # reply when nothing was said. Absent means marked.
            {"name": "open_unmarked", "json": '{"type":"open","utterance":"%s","handle":7,"codec":"opus16k20ms","unmarked":true}' % u},
            {"name": "end", "json": '{"type":"end","utterance":"%s","frames":150}' % u},
            # The relay cut at the server's endpoint (frame 120) and carried
            # frames 120..150 into its next utterance: transcribe 0..120.
            {"name": "end_cut", "json": '{"type":"end","utterance":"%s","frames":150,"speech_frames":120}' % u},
        ],
        "client_errors": [
            {"name": "unknown_type", "json": '{"type":"close","utterance":"%s"}' % u},
            {"name": "unknown_field", "json": '{"type":"end","utterance":"%s","frames":1,"extra":true}' % u},
            {"name": "missing_field", "json": '{"type":"end","utterance":"%s"}' % u},
            {"name": "bad_uuid", "json": '{"type":"end","utterance":"nope","frames":1}'},
            {"name": "not_json", "json": 'open'},
        ],
        "server": [
            {"name": "opened", "json": '{"type":"opened","utterance":"%s","handle":7,"next_seq":42,"complete":false}' % u},
            {"name": "opened_complete", "json": '{"type":"opened","utterance":"%s","handle":7,"next_seq":150,"complete":true}' % u},
            {"name": "complete", "json": '{"type":"complete","utterance":"%s","frames":150}' % u},
            {"name": "partial", "json": '{"type":"partial","utterance":"%s","text":"turn on the"}' % u},
            {"name": "endpoint", "json": '{"type":"endpoint","utterance":"%s","frames":88}' % u},
            {"name": "final", "json": '{"type":"final","utterance":"%s","text":"Turn on the lights \\"now\\"."}' % u},
            # Segments: seconds from the first frame, as floats; words only
            # where the engine timed them. A final with no segments omits the
            # key (the vector above), as a v1 server sent it.
            {"name": "final_segments", "json": '{"type":"final","utterance":"%s","text":"Turn on the lights. Now.","segments":[{"start":0.0,"end":1.5,"text":"Turn on the lights.","words":[{"word":"Turn","start":0.0,"end":0.25,"probability":0.75},{"word":"on","start":0.25,"end":0.5,"probability":1.0},{"word":"the","start":0.5,"end":0.75,"probability":0.5},{"word":"lights.","start":0.75,"end":1.5,"probability":0.875}]},{"start":2.0,"end":2.5,"text":"Now."}]}' % u},
            {"name": "reply", "json": '{"type":"reply","utterance":"%s","title":"Lights","body":"Done. Caf\u00e9 mode."}' % u},
            {"name": "error_utterance", "json": '{"type":"error","utterance":"%s","code":"utterance_too_long","message":"an utterance may be at most 30000 frames; end it and start a new one"}' % u},
            {"name": "error_connection", "json": '{"type":"error","utterance":null,"code":"unauthorized","message":"the bearer token is not valid; register the device again"}'},
        ],
        "http": [
            {"name": "utterance_view", "json": '{"id":"%s","state":"replied","frames":150,"transcript":"turn on the lights","segments":[{"start":0.0,"end":1.25,"text":"turn on the lights"}],"reply_title":"Lights","reply_body":"Done.","error":null,"timings":{"received_end_ms":1700000000000,"stt_start_ms":1700000000010,"stt_done_ms":1700000000400,"reply_ms":1700000000450,"push_ms":1700000000500}}' % u},
            {"name": "utterance_view_receiving", "json": '{"id":"%s","state":"receiving","frames":3,"transcript":null,"segments":[],"reply_title":null,"reply_body":null,"error":null,"timings":{"received_end_ms":null,"stt_start_ms":null,"stt_done_ms":null,"reply_ms":null,"push_ms":null}}' % u},
            {"name": "upload_response", "json": '{"utterance":"%s","state":"complete","frames":150,"added":108}' % u},
            {"name": "push_registration", "json": '{"platform":"apns","token":"a1b2c3","environment":"production"}'},
            {"name": "push_registration_sandbox", "json": '{"platform":"apns","token":"a1b2c3","environment":"sandbox"}'},
            {"name": "push_registration_fcm", "json": '{"platform":"fcm","token":"t","environment":"production"}'},
            {"name": "text_utterance", "json": '{"text":"call mum"}'},
            {"name": "utterance_list", "json": '{"utterances":[{"id":"%s","state":"receiving","frames":3,"transcript":null,"segments":[],"reply_title":null,"reply_body":null,"error":null,"timings":{"received_end_ms":null,"stt_start_ms":null,"stt_done_ms":null,"reply_ms":null,"push_ms":null}}],"next_before":"%s"}' % (u, u)},
            {"name": "utterance_list_last", "json": '{"utterances":[],"next_before":null}'},
            {"name": "deleted_data", "json": '{"utterances":12,"audio_files":11}'},
            {"name": "new_device", "json": '{"name":"kitchen"}'},
            {"name": "device_created", "json": '{"id":"%s","name":"kitchen","token":"lyd_AAAA"}' % u},
            {"name": "error_body", "json": '{"code":"payload_too_large","message":"uploads are at most 4194304 bytes"}'},
        ],
    }

    # Link records.
    svc = uuid.UUID("6c616e79-0001-4a8e-9d2b-5f3c1a7e0001")
    omi_svc = uuid.UUID("19b10000-e8f2-537e-4f6c-d104768a1214")
    adv = bytes([1]) + struct.pack("<H", 19) + svc.bytes + struct.pack("<H", 185) + bytes([0])
    adv_omi = bytes([1]) + struct.pack("<H", 19) + omi_svc.bytes + struct.pack("<H", 23) + bytes([21])
    note = ble(0, 0, "opus16k20ms", start=True, payload=b"\xfc")
    notify = bytes([2]) + struct.pack("<H", len(note)) + note
    battery = bytes([3, 1, 0, 87])
    empty_notify = bytes([2, 0, 0])
    out["link_records.json"] = {
        "why": "kind | len u16 LE | payload; UUIDs in RFC 4122 byte order (as written)",
        "vectors": [
            {"name": "advertise_lanyard", "hex": adv.hex(),
             "record": {"kind": "advertise", "service": str(svc), "att_mtu": 185, "codec": 0}},
            {"name": "advertise_omi", "hex": adv_omi.hex(),
             "record": {"kind": "advertise", "service": str(omi_svc), "att_mtu": 23, "codec": 21}},
            {"name": "notify", "why": "02 | 06 00 | 11 0000 00 01 fc", "hex": notify.hex(),
             "record": {"kind": "notify", "payload": note.hex()}},
            {"name": "notify_empty", "hex": empty_notify.hex(), "record": {"kind": "notify", "payload": ""}},
            {"name": "battery", "why": "03 | 01 00 | 87 = 0x57", "hex": battery.hex(),
             "record": {"kind": "battery", "level": 87}},
        ],
        "errors": [
            {"name": "unknown_kind", "hex": "040000", "error": "unknown_kind"},
            {"name": "too_long", "hex": "020104", "error": "too_long",
             "why": "len 0x0401 = 1025 > 1024, rejected before the payload arrives"},
            {"name": "battery_two_bytes", "hex": "0302005700", "error": "bad_length"},
            {"name": "advertise_short", "hex": "01010000", "error": "bad_length"},
        ],
    }
    assert adv.hex().startswith("0113006c616e79") and notify.hex() == "020600110000000" + "1fc"

    # Ogg Opus: three small packets.
    serial = 0x4C414E59  # "LANY"
    packets = [bytes.fromhex("fc0102"), bytes.fromhex("fc"), pattern(300)]
    head = b"OpusHead" + bytes([1, 1]) + struct.pack("<HIhB", 312, 16000, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 7) + b"lanyard" + struct.pack("<I", 0)
    assert len(head) == 19 and len(tags) == 23
    ogg = (ogg_page(0x02, 0, serial, 0, [head])
           + ogg_page(0x00, 0, serial, 1, [tags])
           + ogg_page(0x04, 3 * 960, serial, 2, packets))
    with open(os.path.join(HERE, "three_packets.ogg"), "wb") as f:
        f.write(ogg)
    out["three_packets.json"] = {
        "why": "page 0 BOS with OpusHead (19 bytes), page 1 OpusTags (23 bytes), page 2 EOS with the "
               "three packets, granule 3 x 960 = 2880; a 300-byte packet is laced as 255 + 45",
        "file": "three_packets.ogg",
        "serial": serial,
        "packets": [p.hex() for p in packets],
    }

    for name, value in out.items():
        with open(os.path.join(HERE, name), "w") as f:
            json.dump(value, f, indent=1, ensure_ascii=True)
            f.write("\n")


if __name__ == "__main__":
    main()
