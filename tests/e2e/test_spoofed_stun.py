"""Spoofed STUN on the media port: requests that name a live connection's ufrag but carry no
valid MESSAGE-INTEGRITY (anyone who learns a ufrag can send them) must not change where the
SFU takes that connection's media from. Before the demux verified integrity, 16 source ports
sending such requests every 50 ms cut a relayed video from 30 fps to under 3."""

import asyncio
import os
import re
import socket
import struct
import time

import harness as h
from harness import PatternVideoTrack

ATTACK_PORTS = 16
ATTACK_INTERVAL = 0.05


def forged_request(username: str, nominate: bool) -> bytes:
    """A binding request as a browser's, with USERNAME (and USE-CANDIDATE), ICE-CONTROLLING and
    a MESSAGE-INTEGRITY of random bytes: right shape, wrong key."""
    body = h.stun_attr(0x0006, username.encode()) + h.stun_attr(0x802A, os.urandom(8))
    if nominate:
        body += h.stun_attr(0x0025, b"")
    body += h.stun_attr(0x0008, os.urandom(20))
    return struct.pack("!HHI12s", 0x0001, len(body), 0x2112A442, os.urandom(12)) + body


def ufrag(sdp: str) -> str:
    m = re.search(r"a=ice-ufrag:(\S+)", sdp)
    assert m, "no ice-ufrag in the SDP"
    return m.group(1)


async def attack(port: int, usernames: list[str], seconds: float) -> int:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(ATTACK_PORTS)]
    sent = 0
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for i, s in enumerate(socks):
                for name in usernames:
                    s.sendto(forged_request(name, nominate=i % 2 == 0), ("127.0.0.1", port))
                    sent += 1
            await asyncio.sleep(ATTACK_INTERVAL)
    finally:
        for s in socks:
            s.close()
    return sent


async def fps(rec: h.Received, seconds: float) -> float:
    before = rec.frames
    await asyncio.sleep(seconds)
    return (rec.frames - before) / seconds


async def test_spoofed_stun_does_not_cut_a_relayed_call(server):
    async with asyncio.timeout(40), h.Session(server) as s:
        ma, mb, answer, video = await s.relayed_pair(PatternVideoTrack(320, 240, 90, 200))

        baseline = await fps(video, 2.0)
        assert baseline >= 20, f"the relayed call runs at {baseline:.1f} fps before the attack"
        m0 = await h.metrics(server)

        # The server's ufrags of both connections (the publisher's, which carries the video,
        # and the subscriber's), in the USERNAME form browsers use.
        # The full username (server:client, as printed by webrtc-rs's warnings before) too.
        names = [
            f"{ufrag(answer)}:{ufrag(ma.pub.localDescription.sdp)}",
            f"{ufrag(answer)}:spoof",
            f"{ufrag(mb.offers[-1])}:spoof",
        ]
        attacking = asyncio.create_task(attack(server.udp_port, names, 4.0))
        await asyncio.sleep(0.5)
        during = await fps(video, 3.0)
        sent = await attacking
        after = await fps(video, 2.0)

        assert during >= 0.8 * baseline, f"{during:.1f} fps under attack, {baseline:.1f} before"
        assert after >= 0.8 * baseline, f"{after:.1f} fps after the attack, {baseline:.1f} before"
        m1 = await h.metrics(server)
        refused = h.metric(m1, "callrelay_media_datagrams_dropped_total", reason="stun_unauthenticated") - h.metric(
            m0, "callrelay_media_datagrams_dropped_total", reason="stun_unauthenticated"
        )
        assert refused >= 0.9 * sent, f"{refused} of {sent} forged requests counted as refused"
        late = [m for t, m in h.DECODE_ERRORS.seen if t > video.first_at]
        assert not late, f"{len(late)} frames failed to decode: {late[:3]}"
        # The log names no ICE credential of the connections.
        log = server.log_tail(200_000)
        for name in names:
            assert name.split(":")[0] not in log, "a server ufrag reached the log"
