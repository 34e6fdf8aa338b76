"""aiortc with each bundle policy through the relay (issue 11): with `max-bundle` aiortc 1.16 reads
a bundled transport's remote candidates from the last bundled m-section, so the SFU's SDP must
carry its candidates in every one (it used to carry them in the first only, and ICE stayed
`checking`). Two members publish and subscribe; each decodes the other's real video. The time
from the joins to each member's first decoded frame is printed."""

import asyncio
import time

import pytest

import harness as h
from harness import PatternVideoTrack, ToneAudioTrack

RED = (90, 200)
BLUE = (200, 90)


def candidate_lines(sdp: str) -> list[list[str]]:
    """The a=candidate lines of each bundled m-section."""
    sections: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        elif sections and line.startswith("a=candidate:"):
            sections[-1].append(line)
    return sections


@pytest.mark.parametrize("policy", ["max-bundle", "balanced"])
async def test_publisher_and_subscriber_decode_video_whatever_the_bundle_policy(server, policy, capsys):
    async with asyncio.timeout(45), h.Session(server) as s:
        patient, doctor = await h.user(server, "patient"), await h.user(server, "doctor")
        appt = await h.appointment(server, patient, doctor)
        room = appt["id"]
        started = time.monotonic()
        a = await s.joined(patient, appt)
        b = await s.joined(doctor, appt)
        ma = s.member(a, room, bundle_policy=policy)
        mb = s.member(b, room, bundle_policy=policy)
        await a.ok("sfu-join", {"roomId": room, "reason": "p2p-failed"})

        answers = await asyncio.gather(
            ma.publish(PatternVideoTrack(320, 240, *RED), ToneAudioTrack()),
            mb.publish(PatternVideoTrack(320, 240, *BLUE), ToneAudioTrack()),
        )
        got_b, got_a = await asyncio.gather(
            ma.wait_frames(b.sid, "video", 10, timeout=20), mb.wait_frames(a.sid, "video", 10, timeout=20)
        )
        for rec in (got_a, got_b):
            assert rec.sizes == {(320, 240)}, rec.sizes
        # Every bundled section of every SDP of the SFU names the same candidates.
        assert all(len(candidate_lines(sdp)) == 2 for sdp in answers), answers
        for sdp in [*answers, *ma.offers, *mb.offers]:
            per_section = candidate_lines(sdp)
            assert per_section[0], per_section
            assert all(c == per_section[0] for c in per_section), per_section
        assert ma.pub.connectionState == "connected" and mb.sub.connectionState == "connected"
        with capsys.disabled():
            print(
                f"\n[bundle {policy}] joins to first decoded video frame: "
                f"doctor {1000 * (got_a.first_at - started):.0f} ms, "
                f"patient {1000 * (got_b.first_at - started):.0f} ms"
            )
