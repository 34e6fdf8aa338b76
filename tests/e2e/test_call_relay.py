"""A direct call whose peer-to-peer link failed, relayed through the SFU (room id = call id)."""

import asyncio

import harness as h
from harness import PatternVideoTrack, ToneAudioTrack

FAKE_OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
FAKE_ANSWER = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


async def test_direct_call_relayed_after_p2p_failure(server):
    async with asyncio.timeout(30), h.Session(server) as s:
        patient, doctor = await h.user(server, "patient"), await h.user(server, "doctor")
        await h.appointment(server, patient, doctor)
        before = await h.metrics(server)
        pc = await s.client(patient)
        dc = await s.client(doctor)

        placed = await pc.ok("call-user", {"to": doctor.id, "callType": "video", "offer": FAKE_OFFER})
        call_id = placed["callId"]
        assert isinstance(call_id, str) and call_id
        ring = await dc.next_event("incoming-call")
        assert ring["callId"] == call_id and ring["offer"] == FAKE_OFFER, ring
        assert ring["from"]["userId"] == patient.id
        await dc.ok("answer-call", {"callId": call_id, "answer": FAKE_ANSWER})
        answered = await pc.next_event("call-answered")
        assert answered == {"callId": call_id, "answer": FAKE_ANSWER}, answered

        # An outsider cannot relay (or publish into) the call.
        outsider = await s.client(await h.user(server, "patient"))
        await outsider.error("sfu-join", {"roomId": call_id, "reason": "p2p-failed"}, "forbidden")

        # Both trickle their candidates with sfu-candidate (the patient's publish candidates even
        # before its offer) instead of putting them in the SDP.
        mp, md = s.member(pc, call_id, trickle=True), s.member(dc, call_id, trickle=True)
        # Not relayed yet: publishing is a conflict.
        offer_pc = h.RTCPeerConnection()
        offer_pc.addTrack(PatternVideoTrack(160, 120, 90, 200))
        await offer_pc.setLocalDescription(await offer_pc.createOffer())
        await pc.error("sfu-publish", {"roomId": call_id, "sdp": offer_pc.localDescription.sdp}, "conflict")
        await offer_pc.close()

        await dc.ok("sfu-join", {"roomId": call_id, "reason": "p2p-failed"})
        for c in (pc, dc):
            assert await c.next_event("relay-activated") == {"roomId": call_id, "reason": "p2p-failed"}
        assert outsider.count("relay-activated") == 0

        # Both directions: the patient sends 320x240, the doctor 176x144.
        await asyncio.gather(
            mp.publish(PatternVideoTrack(320, 240, 90, 200)),
            md.publish(PatternVideoTrack(176, 144, 200, 90)),
        )
        at_doctor = await md.wait_frames(pc.sid, "video", 30)
        at_patient = await mp.wait_frames(dc.sid, "video", 30)
        assert at_doctor.sizes == {(320, 240)}, at_doctor.sizes
        assert at_patient.sizes == {(176, 144)}, at_patient.sizes
        for m, own in ((mp, pc.sid), (md, dc.sid)):
            for sdp in m.offers:
                assert own not in h.all_msid_streams(sdp)
            assert all(a.get("ok") for a in m.answer_acks), m.answer_acks
            # publish candidates + null, subscribe candidates + null
            assert len(m.candidate_acks) >= 4, m.candidate_acks
            assert all(a.get("ok") for a in m.candidate_acks), m.candidate_acks

        m = await h.metrics(server)
        assert (
            h.metric(m, "callrelay_relay_activations_total", reason="p2p-failed")
            - h.metric(before, "callrelay_relay_activations_total", reason="p2p-failed")
            == 1
        )
        assert h.metric(m, "callrelay_sfu_peer_connections") == 4

        await pc.ok("end-call", {"callId": call_id})
        assert await dc.next_event("call-ended") == {"callId": call_id, "reason": "hangup"}
        # The call is over: its relay is gone, and it is no longer a room anyone may use.
        await pc.error("sfu-publish", {"roomId": call_id, "sdp": FAKE_OFFER}, "forbidden")

        async def pcs():
            return h.metric(await h.metrics(server), "callrelay_sfu_peer_connections") == 0

        await h.eventually(pcs, what="no SFU peer connection after end-call")

        for who in (patient, doctor):
            status, body = await h.api(server, "GET", "/api/calls", token=who.token)
            assert status == 200, (status, body)
            calls = [c for c in body["calls"] if c["callId"] == call_id]
            assert len(calls) == 1, body
            call = calls[0]
            assert call["media"] == "sfu", call
            assert call["status"] == "ended" and call["endReason"] == "hangup", call
            assert call["callerId"] == patient.id and call["calleeId"] == doctor.id
            assert call["callType"] == "video"


async def test_relayed_call_names_the_active_speaker(server):
    """In a relayed direct call both parties hear who speaks (`active-speaker`, room id = call id)."""
    async with asyncio.timeout(30), h.Session(server) as s:
        patient, doctor = await h.user(server, "patient"), await h.user(server, "doctor")
        await h.appointment(server, patient, doctor)
        pc = await s.client(patient)
        dc = await s.client(doctor)
        placed = await pc.ok("call-user", {"to": doctor.id, "callType": "audio", "offer": FAKE_OFFER})
        call_id = placed["callId"]
        await dc.next_event("incoming-call")
        await dc.ok("answer-call", {"callId": call_id, "answer": FAKE_ANSWER})
        await pc.next_event("call-answered")
        await pc.ok("sfu-join", {"roomId": call_id, "reason": "p2p-failed"})
        for c in (pc, dc):
            await c.next_event("relay-activated")
        await s.member(pc, call_id).publish(ToneAudioTrack())
        for c in (pc, dc):
            assert await c.next_event("active-speaker", timeout=10) == {"roomId": call_id, "socketId": pc.sid}
