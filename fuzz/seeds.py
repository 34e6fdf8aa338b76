"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/seed-*) from real clients:
aiortc's offer, its STUN (aioice), RTP/RTCP serializers and OpenSSL's DTLS ClientHello (what
aiortc sends), plus a Chrome offer captured from headless Chromium (fuzz/seeds/chrome_offer.sdp)
and the Firefox/Safari/aiortc SDPs of signaling/testdata.

Run from the repository root with the aiortc suite's virtualenv (tests/e2e/requirements.txt):
    tests/e2e/.venv/bin/python fuzz/seeds.py
The output is deterministic except for what aiortc randomizes (ids, ICE credentials, SSRCs).
"""

import asyncio
import json
import re
import struct
from pathlib import Path

from aioice import stun
from aiortc import RTCPeerConnection
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    RtpPacket,
)
from OpenSSL import SSL

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"

# media_demux.rs: the first connection's local ICE credentials.
UFRAG, PWD = "srvA", "fuzzpasswordfuzzpasswordA"
# media_packets.rs: the subscriber's numbering starts at 65500 (so NACKs of 65500.. hit).
FIRST_OUT_SEQ = 65500
PUB_SSRC = 0x1234ABCD

# Socket.IO events in the order of signaling/src/payload.rs EVENTS (the first byte of a
# socketio_payloads input picks one), then one the server does not know.
EVENTS = [
    "join-room", "signal", "chat-message", "leave-room", "join", "call-user", "answer-call",
    "reject-call", "end-call", "ice-candidate", "sfu-join", "sfu-publish",
    "sfu-subscribe-answer", "sfu-candidate", "sfu-leave", "sfu-restart-ice", "media-state",
    "call-media-state", "admit", "decline", "sfu-video-size", "no-such-event",
]


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    (CORPUS / target / f"seed-{name}").write_bytes(data)


def record(op, datagram):
    """One step of the media targets' scripts: [op] [len: u16 BE] [datagram]."""
    return bytes([op]) + struct.pack("!H", len(datagram)) + datagram


async def aiortc_offer():
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendonly")
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    # Host candidates of the machine that ran this: documentation addresses instead.
    return re.sub(r"(c=IN IP4 |a=candidate:\S+ \d \S+ \d+ )[0-9.]+", r"\g<1>192.0.2.10", sdp)


def binding_request():
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    msg.attributes["USERNAME"] = f"{UFRAG}:cli1"
    msg.attributes["PRIORITY"] = 1853817087
    msg.attributes["ICE-CONTROLLING"] = 0x1122334455667788
    msg.attributes["USE-CANDIDATE"] = None
    msg.add_message_integrity(PWD.encode())
    msg.add_fingerprint()
    return bytes(msg)


def rtp(seq, ts, payload_type=96, marker=0, padding=False):
    ext_map = HeaderExtensionsMap()
    ext_map.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=4, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(
            id=2, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
        RTCRtpHeaderExtensionParameters(
            id=3, uri="http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"),
    ]))
    p = RtpPacket(payload_type=payload_type, marker=marker, sequence_number=seq, timestamp=ts,
                  ssrc=PUB_SSRC, payload=bytes([0x90, 0x80, 0x00, 0x00]) + bytes(range(40)))
    p.extensions.mid = "1"
    p.extensions.abs_send_time = 0x123456
    p.extensions.transport_sequence_number = seq
    if padding:
        p.padding_size = 3
    return p.serialize(ext_map)


def rtcp_compound(nacked):
    sr = RtcpSrPacket(
        ssrc=0x5EED0001,
        sender_info=RtcpSenderInfo(ntp_timestamp=0xE8A1B2C3D4E5F600, rtp_timestamp=90000,
                                   packet_count=100, octet_count=12000),
        reports=[RtcpReceiverInfo(ssrc=PUB_SSRC, fraction_lost=3, packets_lost=2,
                                  highest_sequence=FIRST_OUT_SEQ + 5, jitter=40, lsr=0x1234,
                                  dlsr=0x100)])
    rr = RtcpRrPacket(ssrc=0x5EED0002, reports=[RtcpReceiverInfo(
        ssrc=0x5EED0001, fraction_lost=0, packets_lost=0, highest_sequence=10, jitter=3, lsr=0,
        dlsr=0)])
    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=0x5EED0002, media_ssrc=0x5EED0001,
                           lost=nacked)
    pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=0x5EED0002, media_ssrc=0x5EED0001)
    return b"".join(bytes(p) for p in (sr, rr, nack, pli))


def dtls_client_hello():
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_tlsext_use_srtp(b"SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80")
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass
    return conn.bio_read(1500)


def main():
    offer = asyncio.run(aiortc_offer())
    chrome = (ROOT / "fuzz" / "seeds" / "chrome_offer.sdp").read_text()
    testdata = ROOT / "signaling" / "testdata"
    crlf = lambda p: p.read_text().replace("\r\n", "\n").replace("\n", "\r\n")  # noqa: E731

    # sdp: offers and an answer as clients write them.
    write("sdp", "chrome-offer", chrome)
    write("sdp", "aiortc-offer", offer)
    write("sdp", "firefox-offer", crlf(testdata / "firefox_offer.sdp"))
    write("sdp", "aiortc-answer", crlf(testdata / "aiortc_answer.sdp"))

    # socketio_payloads: one valid payload per event (the aiortc offer where an SDP goes).
    candidate = {"candidate": "candidate:1 1 udp 2130706431 192.0.2.10 50000 typ host",
                 "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"}
    payloads = {
        "join-room": {"appointmentId": "a1", "avatarSeed": "fox"},
        "signal": {"to": "s1", "type": "offer", "payload": {"type": "offer", "sdp": offer}},
        "chat-message": {"text": "hello\nthere"},
        "leave-room": {},
        "join": {"userId": "u1"},
        "call-user": {"to": "u2", "callType": "video", "offer": {"type": "offer", "sdp": offer}},
        "answer-call": {"callId": "c1", "answer": offer.replace("a=setup:actpass", "a=setup:active")},
        "reject-call": {"callId": "c1", "reason": "in surgery"},
        "end-call": {"callId": "c1"},
        "ice-candidate": {"callId": "c1", "candidate": candidate},
        "sfu-join": {"roomId": "r1", "reason": "p2p-failed"},
        "sfu-publish": {"roomId": "r1", "sdp": offer},
        "sfu-subscribe-answer": {"roomId": "r1", "sdp": crlf(testdata / "aiortc_answer.sdp")},
        "sfu-candidate": {"roomId": "r1", "pc": "publish", "candidate": candidate},
        "sfu-leave": {"roomId": "r1"},
        "sfu-restart-ice": {"roomId": "r1"},
        "media-state": {"roomId": "a1", "audio": False, "video": True, "screen": True,
                        "screenTrackId": "9d3c5e2a-7b1f-4c8e-a2d4-1f6b8e3c0a57"},
        "call-media-state": {"callId": "c1", "audio": True, "video": False, "screen": True},
        "admit": {"appointmentId": "a1", "userId": "pat-1"},
        "decline": {"appointmentId": "a1", "userId": "pat-1", "reason": "Please book another time"},
        "sfu-video-size": {"roomId": "r1", "publisherId": "Xk3pQ9vLmN2rT8wZ", "width": 640,
                           "height": 360},
        "no-such-event": {"roomId": "r1"},
    }
    for i, event in enumerate(EVENTS):
        write("socketio_payloads", event, bytes([i]) + json.dumps(payloads[event]).encode())

    stun_req = binding_request()
    hello = dtls_client_hello()
    packets = [rtp(1000 + i, 90000 + 3000 * i, marker=int(i == 4), padding=(i == 2))
               for i in range(5)]
    rtcp = rtcp_compound([FIRST_OUT_SEQ, FIRST_OUT_SEQ + 2, FIRST_OUT_SEQ + 3])

    # media_demux: an authenticated binding request teaches the address, then DTLS, RTP and
    # RTCP from it route; from another address they do not; a re-signed request (op 0x08).
    write("media_demux", "stun-binding-request", record(0, stun_req))
    write("media_demux", "session",
          record(0, stun_req) + record(0, hello) + record(0, packets[0]) + record(0, rtcp)
          + record(1, packets[1]))
    write("media_demux", "resigned-for-second-connection", record(0x18, stun_req) + record(1, rtcp))

    # media_packets: each kind alone, and a stream with a NACK answered from the cache.
    write("media_packets", "stun-binding-request", record(0, stun_req))
    write("media_packets", "dtls-client-hello", record(0, hello))
    write("media_packets", "rtcp-sr-rr-nack-pli", record(0, rtcp))
    write("media_packets", "rtp-stream-then-nack",
          b"".join(record(66, p) for p in packets) + record(2, rtcp))
    write("media_packets", "rtp-new-segment",
          record(66, packets[0]) + record(67, rtp(7, 5, payload_type=111)) + record(2, rtcp))


if __name__ == "__main__":
    main()
