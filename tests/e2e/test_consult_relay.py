"""Consult rooms relayed through the SFU, with aiortc peers that encode and decode real media."""

import asyncio

import pytest

import harness as h
from harness import PatternVideoTrack, ToneAudioTrack

# Publisher colours (U, V): far apart, so a swapped track shows.
RED = (90, 200)
BLUE = (200, 90)


def near(a: float, b: float, tol: float = 25) -> bool:
    return abs(a - b) <= tol


def assert_colour(rec: h.Received, colour: tuple[int, int]):
    assert rec.chroma, "no frame was sampled for its colour"
    u = sum(c[0] for c in rec.chroma[-4:]) / len(rec.chroma[-4:])
    v = sum(c[1] for c in rec.chroma[-4:]) / len(rec.chroma[-4:])
    assert near(u, colour[0]) and near(v, colour[1]), f"decoded chroma {(u, v)}, sent {colour}"


async def test_two_party_room_relayed_video_and_audio(server):
    async with asyncio.timeout(30), h.Session(server) as s:
        patient, doctor = await h.user(server, "patient"), await h.user(server, "doctor")
        appt = await h.appointment(server, patient, doctor)
        a = await s.joined(patient, appt)
        b = await s.joined(doctor, appt)
        room = appt["id"]
        ma, mb = s.member(a, room), s.member(b, room)

        await b.ok("sfu-join", {"roomId": room, "reason": "forced"})
        for c in (a, b):
            assert await c.next_event("relay-activated") == {"roomId": room, "reason": "forced"}
        # A further sfu-join is acknowledged and changes nothing.
        await a.ok("sfu-join", {"roomId": room, "reason": "p2p-failed"})

        answer = await ma.publish(PatternVideoTrack(320, 240, *RED), ToneAudioTrack())
        kinds = {sec["kind"]: sec for sec in h.sdp_sections(answer)}
        assert kinds["video"]["codecs"][0] == "vp8", kinds["video"]
        assert kinds["audio"]["codecs"][0] == "opus", kinds["audio"]
        assert "a=ice-lite" in answer

        video = await mb.wait_frames(a.sid, "video", 30)
        audio = await mb.wait_frames(a.sid, "audio", 50)
        assert video.sizes == {(320, 240)}, video.sizes
        assert_colour(video, RED)
        # The tone survives Opus: clearly louder than silence (sent RMS is about 5650).
        assert audio.rms and max(audio.rms[-5:]) > 2000, audio.rms
        # B's tracks come from A only, named by A's socket id.
        assert {t.stream for t in mb.tracks} == {a.sid}, [(t.stream, t.kind) for t in mb.tracks]
        assert sorted(t.kind for t in mb.tracks) == ["audio", "video"]
        assert all(ack.get("ok") for ack in mb.answer_acks), mb.answer_acks
        offer_streams = h.active_streams(mb.offers[-1])
        assert offer_streams == {a.sid: {"audio", "video"}}, offer_streams

        # A publishes only: it is never offered its own tracks.
        await asyncio.sleep(0.5)
        for sdp in ma.offers:
            assert a.sid not in h.all_msid_streams(sdp), sdp
        assert not ma.tracks, [(t.stream, t.kind) for t in ma.tracks]

        # The second sfu-join changed nothing.
        assert a.count("relay-activated") == 1 and b.count("relay-activated") == 1

        # Frames keep coming (not a burst then a stall), and once the first frame decoded every
        # later one does: nothing is lost or mangled on the way (loopback loses nothing).
        before = video.frames
        await asyncio.sleep(1.0)
        assert video.frames >= before + 15, (before, video.frames)
        late = [m for t, m in h.DECODE_ERRORS.seen if t > video.first_at]
        assert not late, f"{len(late)} frames failed to decode after the first good one: {late[:3]}"

        # An operator sees the room relayed, with what each of A's tracks brings in.
        admin = await h.user(server, "admin")
        status, body = await h.api(server, "GET", "/api/admin/rooms", admin.token)
        assert status == 200, body
        [seen] = [r for r in body["rooms"] if r["appointmentId"] == room]
        assert (seen["media"], seen["relayReason"]) == ("sfu", "forced"), seen
        assert sorted(p["socketId"] for p in seen["participants"]) == sorted([a.sid, b.sid])
        tracks = {t["kind"]: t for t in seen["tracks"]}
        assert set(tracks) == {"audio", "video"}, seen["tracks"]
        for t in tracks.values():
            assert t["participant"] == a.sid, t
            assert t["bitrateBps"] > 0 and t["packetsReceived"] > 0, t
            assert t["packetsLost"] == 0, t  # loopback loses nothing


async def test_three_members_room_size_and_two_publishers(server):
    async with asyncio.timeout(30), h.Session(server) as s:
        patient, doctor = await h.user(server, "patient"), await h.user(server, "doctor")
        admin = await h.user(server, "admin")
        appt = await h.appointment(server, patient, doctor)
        room = appt["id"]
        a = await s.joined(patient, appt)
        b = await s.joined(doctor, appt)
        await asyncio.sleep(0.2)
        assert a.count("relay-activated") == 0 and b.count("relay-activated") == 0
        ma, mb = s.member(a, room), s.member(b, room)
        c = await s.joined(admin, appt)
        mc = s.member(c, room)
        for cl in (a, b, c):
            assert await cl.next_event("relay-activated") == {"roomId": room, "reason": "room-size"}

        await asyncio.gather(
            ma.publish(PatternVideoTrack(320, 240, *RED)),
            mc.publish(PatternVideoTrack(240, 160, *BLUE)),
        )
        from_a = await mb.wait_frames(a.sid, "video", 30)
        from_c = await mb.wait_frames(c.sid, "video", 30)
        assert from_a is not from_c
        assert from_a.sizes == {(320, 240)}, from_a.sizes
        assert from_c.sizes == {(240, 160)}, from_c.sizes
        assert_colour(from_a, RED)
        assert_colour(from_c, BLUE)
        assert {t.stream for t in mb.tracks} == {a.sid, c.sid}

        # Each publisher gets the other's track and never its own.
        got_c = await ma.wait_frames(c.sid, "video", 10)
        got_a = await mc.wait_frames(a.sid, "video", 10)
        assert got_c.sizes == {(240, 160)} and got_a.sizes == {(320, 240)}
        for m, own in ((ma, a.sid), (mc, c.sid)):
            assert m.offers, "a publisher got no subscribe offer"
            for sdp in m.offers:
                assert own not in h.all_msid_streams(sdp), f"{own} was offered its own track:\n{sdp}"
            assert own not in {t.stream for t in m.tracks}
        for m in (ma, mb, mc):
            assert all(ack.get("ok") for ack in m.answer_acks), m.answer_acks


async def test_leave_renegotiates_and_metrics(server):
    async with asyncio.timeout(30), h.Session(server) as s:
        before = await h.metrics(server)
        patient, doctor = await h.user(server, "patient"), await h.user(server, "doctor")
        appt = await h.appointment(server, patient, doctor)
        room = appt["id"]
        a = await s.joined(patient, appt)
        b = await s.joined(doctor, appt)
        ma, mb = s.member(a, room), s.member(b, room)
        await a.ok("sfu-join", {"roomId": room, "reason": "forced"})
        await b.next_event("relay-activated")
        await ma.publish(PatternVideoTrack(160, 120, *RED), ToneAudioTrack())
        video = await mb.wait_frames(a.sid, "video", 30)
        await mb.wait_frames(a.sid, "audio", 10)

        async def pcs():
            return h.metric(await h.metrics(server), "callrelay_sfu_peer_connections")

        # A: publish; B: subscribe (A has nothing to receive, so no subscribe connection).
        assert await h.eventually(lambda: _eq(pcs, 2), what="2 SFU peer connections")
        offers_before = len(mb.offers)
        await a.ok("sfu-leave", {"roomId": room})

        await mb.wait_offer_count(offers_before + 1)
        last = mb.offers[-1]
        assert a.sid not in h.active_streams(last), f"A's tracks still offered after sfu-leave:\n{last}"
        assert all(ack.get("ok") for ack in mb.answer_acks), mb.answer_acks

        # Frames from A stop.
        await asyncio.sleep(0.5)
        stopped_at = video.frames
        await asyncio.sleep(1.0)
        assert video.frames <= stopped_at + 1, (stopped_at, video.frames)

        # B's subscribe connection is all that remains.
        await h.eventually(lambda: _eq(pcs, 1), what="1 SFU peer connection after A left")
        m = await h.metrics(server)
        fwd = h.metric(m, "callrelay_rtp_packets_forwarded_total", kind="video")
        assert fwd - h.metric(before, "callrelay_rtp_packets_forwarded_total", kind="video") >= 30, fwd
        assert h.metric(m, "callrelay_rtp_packets_forwarded_total", kind="audio") > 0
        assert h.metric(m, "callrelay_rtp_packets_received_total", kind="video") >= 30
        # B started receiving A's video mid-stream: the SFU asked A for a keyframe.
        assert h.metric(m, "callrelay_rtcp_pli_total", direction="out") >= 1
        assert h.metric(m, "callrelay_relay_activations_total", reason="forced") >= 1
        assert (
            h.metric(m, "callrelay_relay_activations_total", reason="forced")
            - h.metric(before, "callrelay_relay_activations_total", reason="forced")
            == 1
        )
        assert h.metric(m, "callrelay_sfu_tracks") == 0, "A's tracks still counted"

        # A may publish again after leaving; B gets A's track back.
        offers_before = len(mb.offers)
        await ma.close()
        ma2 = s.member(a, room)
        # (New content, so the frames cannot be the old track's.)
        await ma2.publish(PatternVideoTrack(240, 160, *BLUE))
        await mb.wait_offer_count(offers_before + 1)
        assert a.sid in h.active_streams(mb.offers[-1]), mb.offers[-1]
        again = await mb.wait_frames(a.sid, "video", stopped_at + 30)
        assert (240, 160) in again.sizes, again.sizes
        assert_colour(again, BLUE)

        # A disconnects while publishing: B is offered a session without A's track again, and
        # only B's subscribe connection remains.
        offers_before = len(mb.offers)
        await a.close()
        await mb.wait_offer_count(offers_before + 1)
        assert a.sid not in h.active_streams(mb.offers[-1]), mb.offers[-1]
        assert all(ack.get("ok") for ack in mb.answer_acks), mb.answer_acks
        await h.eventually(lambda: _eq(pcs, 1), what="1 SFU peer connection after A disconnected")
        await b.close()
        await h.eventually(lambda: _eq(pcs, 0), what="no SFU peer connection after everyone left")
        m = await h.metrics(server)
        assert h.metric(m, "callrelay_sfu_tracks") == 0


async def _eq(fn, want):
    return await fn() == want


async def _relayed_pair(s, server):
    patient, doctor = await h.user(server, "patient"), await h.user(server, "doctor")
    appt = await h.appointment(server, patient, doctor)
    room = appt["id"]
    a = await s.joined(patient, appt)
    b = await s.joined(doctor, appt)
    ma, mb = s.member(a, room), s.member(b, room)
    await a.ok("sfu-join", {"roomId": room, "reason": "forced"})
    return room, a, b, ma, mb


async def _renegotiate(member: h.Member) -> None:
    """A further sfu-publish on the same publish connection (tracks added or stopped)."""
    pub = member.pub
    await pub.setLocalDescription(await pub.createOffer())
    res = await member.client.ok("sfu-publish", {"roomId": member.room, "sdp": pub.localDescription.sdp})
    await pub.setRemoteDescription(h.RTCSessionDescription(sdp=res["sdp"], type="answer"))


async def test_active_speaker_from_the_audio_level(server):
    """aiortc writes the audio level (RFC 6464) of its tone into each packet: the SFU names the
    one who speaks to every member, the speaker included, once while it goes on speaking."""
    async with asyncio.timeout(30), h.Session(server) as s:
        room, a, b, ma, mb = await _relayed_pair(s, server)
        answer = await ma.publish(ToneAudioTrack())
        assert "urn:ietf:params:rtp-hdrext:ssrc-audio-level" in answer, answer
        for c in (a, b):
            assert await c.next_event("active-speaker", timeout=10) == {
                "roomId": room,
                "socketId": a.sid,
            }
        await asyncio.sleep(2)
        assert a.count("active-speaker") == 1 and b.count("active-speaker") == 1


async def test_publisher_adds_a_track_later(server):
    """Turning the microphone on mid-call: a second sfu-publish on the same connection."""
    async with asyncio.timeout(30), h.Session(server) as s:
        room, a, b, ma, mb = await _relayed_pair(s, server)
        await ma.publish(PatternVideoTrack(160, 120, *RED))
        video = await mb.wait_frames(a.sid, "video", 30)
        assert h.active_streams(mb.offers[-1]) == {a.sid: {"video"}}
        offers = len(mb.offers)

        ma.pub.addTrack(ToneAudioTrack())
        await _renegotiate(ma)
        await mb.wait_offer_count(offers + 1)
        assert h.active_streams(mb.offers[-1]) == {a.sid: {"audio", "video"}}, mb.offers[-1]
        audio = await mb.wait_frames(a.sid, "audio", 25)
        assert max(audio.rms[-2:]) > 2000, audio.rms
        # The video went on undisturbed on the same remote track.
        assert mb.received(a.sid, "video") is video
        before = video.frames
        await asyncio.sleep(0.5)
        assert video.frames >= before + 8, (before, video.frames)
        assert all(ack.get("ok") for ack in mb.answer_acks), mb.answer_acks


async def test_publisher_stops_a_track(server):
    """Turning the camera off mid-call: the video m-section becomes inactive."""
    async with asyncio.timeout(30), h.Session(server) as s:
        room, a, b, ma, mb = await _relayed_pair(s, server)
        await ma.publish(PatternVideoTrack(160, 120, *RED), ToneAudioTrack())
        await mb.wait_frames(a.sid, "video", 15)
        await mb.wait_frames(a.sid, "audio", 10)
        offers = len(mb.offers)

        for t in ma.pub.getTransceivers():
            if t.kind == "video":
                t.direction = "inactive"
        await _renegotiate(ma)
        await mb.wait_offer_count(offers + 1, timeout=3)
        assert h.active_streams(mb.offers[-1]) == {a.sid: {"audio"}}, mb.offers[-1]
        m = await h.metrics(server)
        assert h.metric(m, "callrelay_sfu_tracks", kind="video") == 0
        assert h.metric(m, "callrelay_sfu_tracks", kind="audio") == 1
