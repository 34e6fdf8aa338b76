"""Bad sfu-* input is refused with an error ack and harms no one: a relayed stream between two
other members keeps delivering decoded frames throughout, and the offender can still publish
properly afterwards."""

import asyncio
import os
import socket
import struct

import harness as h
from harness import PatternVideoTrack

GARBAGE_SDP = "v=0\r\nnonsense"


async def valid_offer() -> str:
    pc = h.RTCPeerConnection()
    pc.addTrack(PatternVideoTrack(160, 120, 128, 128))
    h.prefer(pc, "video", "VP8")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def stun_binding(ufrag: str) -> bytes:
    """A STUN binding request naming `ufrag` (no integrity: the server must drop it)."""
    attr = h.stun_attr(0x0006, f"{ufrag}:x".encode())
    return struct.pack("!HHI12s", 0x0001, len(attr), 0x2112A442, os.urandom(12)) + attr


async def test_bad_input_is_refused_and_harms_no_one(server):
    async with asyncio.timeout(30), h.Session(server) as s:
        # The innocent room: p1 publishes, d1 receives.
        p1, d1 = await h.user(server, "patient"), await h.user(server, "doctor")
        appt1 = await h.appointment(server, p1, d1)
        r1 = appt1["id"]
        a = await s.joined(p1, appt1)
        b = await s.joined(d1, appt1)
        ma, mb = s.member(a, r1), s.member(b, r1)
        await a.ok("sfu-join", {"roomId": r1, "reason": "forced"})
        await ma.publish(PatternVideoTrack(320, 240, 90, 200))
        stream = await mb.wait_frames(a.sid, "video", 30)
        m0 = await h.metrics(server)

        # The offender, in its own (not yet relayed) room.
        p2, d2 = await h.user(server, "patient"), await h.user(server, "doctor")
        appt2 = await h.appointment(server, p2, d2)
        r2 = appt2["id"]
        x = await s.joined(p2, appt2)
        y = await s.joined(d2, appt2)
        offer = await valid_offer()
        frames_before = stream.frames

        # 1. Publishing before the room is relayed.
        await x.error("sfu-publish", {"roomId": r2, "sdp": offer}, "conflict")
        # (No offer was ever made to x: refused, with not_found from the SFU today.)
        await x.error("sfu-subscribe-answer", {"roomId": r2, "sdp": offer})

        # 2. Every sfu-* event for a room the socket is not in.
        cand = {
            "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
            "usernameFragment": None,
        }
        for event, body in [
            ("sfu-join", {"roomId": r1, "reason": "forced"}),
            ("sfu-publish", {"roomId": r1, "sdp": offer}),
            ("sfu-subscribe-answer", {"roomId": r1, "sdp": offer}),
            ("sfu-candidate", {"roomId": r1, "pc": "publish", "candidate": cand}),
            ("sfu-candidate", {"roomId": r1, "pc": "subscribe", "candidate": None}),
            ("sfu-leave", {"roomId": r1}),
        ]:
            await x.error(event, body, "forbidden")
        # ... and for rooms that do not exist.
        await x.error("sfu-join", {"roomId": "no-such-room", "reason": "forced"}, "forbidden")
        await x.error("sfu-leave", {"roomId": "no-such-room"}, "forbidden")
        assert a.count("relay-activated") == 1 and b.count("relay-activated") == 1

        # 3. Malformed payloads.
        for event, body in [
            ("sfu-join", {"roomId": r2, "reason": "because"}),
            ("sfu-join", {"roomId": r2}),
            ("sfu-join", "r2"),
            ("sfu-join", None),
            ("sfu-publish", {"roomId": r2}),
            ("sfu-publish", {"roomId": r2, "sdp": {"type": "offer", "sdp": offer}}),
            ("sfu-publish", {"roomId": 7, "sdp": offer}),
            ("sfu-publish", ["not", "an", "object"]),
            ("sfu-candidate", {"roomId": r2, "pc": "sideways", "candidate": cand}),
            (
                "sfu-candidate",
                {"roomId": r2, "pc": "publish", "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"},
            ),
            ("sfu-candidate", {"roomId": r2, "pc": "publish", "candidate": {"candidate": 5}}),
            ("sfu-subscribe-answer", {"roomId": r2, "sdp": None}),
            ("sfu-leave", {}),
        ]:
            await x.error(event, body, "invalid_payload")
        big = "v=0\r\n" + "a=x-filler:" + "z" * 70_000 + "\r\n"
        await x.error("sfu-publish", {"roomId": r2, "sdp": big}, "too_large")
        await x.error(
            "sfu-candidate",
            {"roomId": r2, "pc": "publish", "candidate": {"candidate": "candidate:" + "9" * 3000}},
            "too_large",
        )

        # 4. Garbage SDP and candidates in a relayed room.
        await x.ok("sfu-join", {"roomId": r2, "reason": "forced"})
        await y.next_event("relay-activated")
        truncated = offer[: len(offer) // 2]
        no_media = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        for sdp in [GARBAGE_SDP, "nonsense", truncated, no_media, "v=0\r\n" + "\x00\xff" * 50]:
            await x.error("sfu-publish", {"roomId": r2, "sdp": sdp}, "invalid_payload")
        await x.error("sfu-subscribe-answer", {"roomId": r2, "sdp": GARBAGE_SDP})
        await x.error("sfu-subscribe-answer", {"roomId": r2, "sdp": "nonsense"}, "invalid_payload")
        # A garbage candidate for a connection that does not exist yet.
        await x.error(
            "sfu-candidate",
            {"roomId": r2, "pc": "publish", "candidate": {"candidate": "garbage", "sdpMid": "0"}},
            "invalid_payload",
        )

        # 5. Garbage datagrams on the media port.
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for _ in range(50):
                udp.sendto(os.urandom(200), ("127.0.0.1", server.udp_port))
                udp.sendto(b"\x80\x60" + os.urandom(150), ("127.0.0.1", server.udp_port))  # RTP-like
                udp.sendto(b"\x16\xfe\xfd" + os.urandom(80), ("127.0.0.1", server.udp_port))  # DTLS-like
                udp.sendto(stun_binding("nosuchufrag"), ("127.0.0.1", server.udp_port))
            udp.sendto(b"", ("127.0.0.1", server.udp_port))
        finally:
            udp.close()

        # The innocent stream never stopped.
        await mb.wait_frames(a.sid, "video", frames_before + 30, timeout=5)
        await asyncio.sleep(0.5)
        assert stream.frames >= frames_before + 40, (frames_before, stream.frames)
        assert all(ack.get("ok") for ack in mb.answer_acks), mb.answer_acks
        m1 = await h.metrics(server)
        dropped = h.metric(m1, "callrelay_media_datagrams_dropped_total") - h.metric(
            m0, "callrelay_media_datagrams_dropped_total"
        )
        assert dropped >= 150, f"garbage datagrams dropped: {dropped}"

        # 6. Nothing of the refused input stuck: the offender publishes properly now, and its
        # room-mate receives it.
        assert h.metric(m1, "callrelay_sfu_peer_connections") == 2, "refused publishes left connections"
        mx, my = s.member(x, r2), s.member(y, r2)
        await mx.publish(PatternVideoTrack(176, 144, 200, 90))
        got = await my.wait_frames(x.sid, "video", 30)
        assert got.sizes == {(176, 144)}
        # ... and a garbage candidate for its existing connection is refused too.
        await x.error(
            "sfu-candidate",
            {"roomId": r2, "pc": "publish", "candidate": {"candidate": "candidate:garbage", "sdpMid": "0"}},
            "invalid_payload",
        )
        assert server.alive()
        await mb.wait_frames(a.sid, "video", stream.frames + 15, timeout=5)
