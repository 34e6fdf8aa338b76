"""What the server writes to its log: never a token, a secret or an SDP body at any level, and
not one line per bad datagram (anyone can send those to the public media port)."""

import asyncio
import hashlib
import hmac
import os
import re
import socket
import struct
import zlib

import pytest

import harness as h
from harness import PatternVideoTrack, ToneAudioTrack


def secrets_in(sdp: str) -> set[str]:
    """The credentials an SDP carries: ICE ufrag and password, DTLS fingerprint."""
    found = set(re.findall(r"a=ice-(?:ufrag|pwd):(\S+)", sdp))
    found |= {fp.upper() for fp in re.findall(r"a=fingerprint:\S+ (\S+)", sdp)}
    return found


def stun_request(username: str, pwd: str) -> bytes:
    """A binding request signed as a browser signs it (RFC 8489: MESSAGE-INTEGRITY keyed with
    the recipient's ICE password, then FINGERPRINT)."""
    tid = os.urandom(12)
    body = h.stun_attr(0x0006, username.encode()) + h.stun_attr(0x802A, os.urandom(8))
    header = lambda length: struct.pack("!HHI12s", 0x0001, length, 0x2112A442, tid)  # noqa: E731
    mac = hmac.new(pwd.encode(), header(len(body) + 24) + body, hashlib.sha1).digest()
    body += h.stun_attr(0x0008, mac)
    crc = (zlib.crc32(header(len(body) + 8) + body) ^ 0x5354554E) & 0xFFFFFFFF
    body += h.stun_attr(0x8028, struct.pack("!I", crc))
    return header(len(body)) + body


@pytest.fixture(scope="module")
def trace_server():
    srv = h.Server(extra_env={"RUST_LOG": "trace"})
    yield srv
    srv.stop()
    srv.cleanup()


async def test_nothing_secret_is_logged_at_trace(trace_server):
    server = trace_server
    async with asyncio.timeout(40), h.Session(server) as s:
        patient, doctor = await h.user(server, "patient"), await h.user(server, "doctor")
        appt = await h.appointment(server, patient, doctor)
        room = appt["id"]
        a = await s.joined(patient, appt)
        b = await s.joined(doctor, appt)
        sdps: list[str] = []

        # A direct P2P offer/answer relayed by `signal`, with real SDPs.
        caller, callee = h.RTCPeerConnection(), h.RTCPeerConnection()
        caller.addTrack(PatternVideoTrack(160, 120, 90, 200))
        await caller.setLocalDescription(await caller.createOffer())
        offer = caller.localDescription.sdp
        await a.ok("signal", {"to": b.sid, "type": "offer", "payload": {"type": "offer", "sdp": offer}})
        relayed = (await b.next_event("signal"))["payload"]
        await callee.setRemoteDescription(h.RTCSessionDescription(sdp=relayed["sdp"], type="offer"))
        await callee.setLocalDescription(await callee.createAnswer())
        answer = callee.localDescription.sdp
        await b.ok("signal", {"to": a.sid, "type": "answer", "payload": {"type": "answer", "sdp": answer}})
        await a.next_event("signal")
        sdps += [offer, answer]
        await a.ok("chat-message", {"text": "hello doctor"})

        # The room relayed: both publish and receive through the SFU.
        await a.ok("sfu-join", {"roomId": room, "reason": "forced"})
        ma, mb = s.member(a, room), s.member(b, room)
        sdps.append(await ma.publish(PatternVideoTrack(320, 240, 90, 200), ToneAudioTrack()))
        sdps.append(ma.pub.localDescription.sdp)
        await mb.wait_frames(a.sid, "video", 20)
        sdps += mb.offers + [mb.sub.localDescription.sdp]

        # A direct call with real SDPs.
        call = await a.ok("call-user", {"to": doctor.id, "callType": "video", "offer": offer})
        await b.next_event("incoming-call")
        await b.ok("answer-call", {"callId": call["callId"], "answer": answer})
        await a.next_event("call-answered")
        await a.ok("end-call", {"callId": call["callId"]})
        for pc in (caller, callee):
            await pc.close()

    await asyncio.sleep(0.5)
    log = server.log_tail(50_000_000)
    assert "TRACE" in log or "DEBUG" in log, "the server did not log at trace: the test tests nothing"
    secrets = {patient.token, doctor.token, h.SECRET}
    for sdp in sdps:
        secrets |= secrets_in(sdp)
    assert len(secrets) > 8, secrets
    leaked = sorted(x for x in secrets if x in log or x.lower() in log)
    assert not leaked, f"{len(leaked)} secrets in the log, e.g. {leaked[0][:12]}…"
    for body_marker in ("v=0", "a=ice-", "a=fingerprint", "a=candidate", "m=video"):
        assert body_marker not in log, f"an SDP body reached the log ({body_marker})"


async def test_bad_datagrams_are_counted_not_logged(server):
    async with asyncio.timeout(60), h.Session(server) as s:
        _, _, answer, video = await s.relayed_pair(PatternVideoTrack(320, 240, 90, 200))
        m0 = await h.metrics(server)
        log_before = server.log_size()

        # A socket that authenticates (it knows the ICE password, as the client does), so what
        # it sends next reaches the connection's SRTP and DTLS layers, which refuse it.
        ufrag = re.search(r"a=ice-ufrag:(\S+)", answer).group(1)
        pwd = re.search(r"a=ice-pwd:(\S+)", answer).group(1)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        target = ("127.0.0.1", server.udp_port)
        sent = 0
        try:
            udp.sendto(stun_request(f"{ufrag}:probe", pwd), target)
            await asyncio.sleep(0.2)
            for i in range(20_000):
                if i % 2:
                    datagram = b"\x80\x60" + os.urandom(10) + os.urandom(140)  # SRTP, bad auth tag
                else:
                    datagram = b"\x17\xfe\xfd\x00\x01" + os.urandom(6) + b"\x00\x40" + os.urandom(64)
                udp.sendto(datagram, target)
                sent += 1
                if i % 100 == 0:
                    await asyncio.sleep(0.005)
        finally:
            udp.close()

        # SRTP that fails authentication is counted as such (or as queue_full, should the
        # kernel drop some before the SFU reads them on a loaded machine); DTLS records that do
        # not decrypt are discarded silently by the DTLS layer, as RFC 6347 4.1.2.7 asks.
        def counted(m: dict[str, float]) -> float:
            return sum(
                h.metric(m, "callrelay_media_datagrams_dropped_total", reason=r)
                for r in ("rejected_srtp", "queue_full")
            )

        async def all_counted():
            got = counted(await h.metrics(server)) - counted(m0)
            return got if got >= 0.95 * sent / 2 else None

        await h.eventually(all_counted, timeout=10, what=f"{sent // 2} forged SRTP packets counted")
        grew = server.log_size() - log_before
        assert grew < 10_000, f"the log grew {grew} bytes for {sent} bad datagrams:\n{server.log_tail(2000)}"
        # The call itself never noticed.
        before = video.frames
        await asyncio.sleep(1.0)
        assert video.frames >= before + 15, (before, video.frames)
