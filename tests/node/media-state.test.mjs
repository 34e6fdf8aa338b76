// Media state (issue 14) over the official socket.io-client: a consult member's microphone,
// camera and screen share relayed to the others (`media-state`) and remembered for later
// joiners (`Peer.media`); the same for direct calls (`call-media-state`); bad payloads and
// outsiders refused with nothing relayed.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import * as h from './harness.mjs';

const T = { timeout: 20000 };

let srv;

before(async () => {
  srv = await h.startServer({ env: { CALLRELAY_LIMITS__SIGNAL_BURST: '200' } });
});
after(h.cleanup);
afterEach(h.closeSockets);

function assertError(res, code) {
  assert.equal(res.ok, false, `expected error ${code}, got ${JSON.stringify(res)}`);
  assert.equal(res.error?.code, code, `expected ${code}, got ${JSON.stringify(res)}`);
  assert.equal(typeof res.error.message, 'string');
}

async function consult() {
  const patient = await h.user(srv, 'patient');
  const doctor = await h.user(srv, 'doctor');
  const appt = await h.appointment(srv, patient, doctor);
  return { patient, doctor, appt };
}

/** Connects `u` and joins `appt`; returns {socket, ack, peers (existing-peers)}. */
async function joined(u, appt) {
  const socket = await h.connect(srv, u.token);
  const ack = await h.ack(socket, 'join-room', { appointmentId: appt.id });
  assert.equal(ack.ok, true, `join-room for ${u.id}: ${JSON.stringify(ack)}`);
  const peers = await h.nextEvent(socket, 'existing-peers');
  return { socket, ack, peers };
}

describe('media-state in a consult room', () => {
  test('is relayed to the other members and kept for a later joiner', T, async () => {
    const { patient, doctor, appt } = await consult();
    const d = await joined(doctor, appt);
    const p = await joined(patient, appt);
    await h.nextEvent(d.socket, 'peer-joined');
    // Nobody said anything yet: no media field.
    assert.equal(p.ack.peers[0].media, undefined);

    const res = await h.ack(p.socket, 'media-state', { audio: false, video: false });
    assert.deepEqual(res, { ok: true });
    const seen = await h.nextEvent(d.socket, 'media-state');
    assert.deepEqual(seen, {
      roomId: appt.id, socketId: p.socket.id, userId: patient.id, audio: false, video: false, screen: false,
    });
    // Not echoed to the sender.
    await h.noEvent(p.socket, 'media-state');

    // Naming the room is the same; screen sharing is carried too, with the track's id.
    const screenTrackId = '{9d3c5e2a-7b1f-4c8e-a2d4-1f6b8e3c0a57}';
    assert.deepEqual(
      await h.ack(d.socket, 'media-state', { roomId: appt.id, audio: true, video: true, screen: true, screenTrackId }),
      { ok: true },
    );
    const fromDoctor = await h.nextEvent(p.socket, 'media-state');
    assert.equal(fromDoctor.socketId, d.socket.id);
    assert.equal(fromDoctor.screen, true);
    assert.equal(fromDoctor.screenTrackId, screenTrackId);

    // An admin joining later sees both states in its join ack and existing-peers.
    const admin = await h.user(srv, 'admin');
    const a = await joined(admin, appt);
    const media = Object.fromEntries(a.ack.peers.map((peer) => [peer.userId, peer.media]));
    assert.deepEqual(media, {
      [doctor.id]: { audio: true, video: true, screen: true, screenTrackId },
      [patient.id]: { audio: false, video: false, screen: false },
    });
    assert.deepEqual(a.peers, a.ack.peers);
  });

  test('outside a room, for another room, or malformed: refused and nothing relayed', T, async () => {
    const { patient, doctor, appt } = await consult();
    const other = await consult();
    const d = await joined(doctor, appt);
    const p = await joined(patient, appt);
    await h.nextEvent(d.socket, 'peer-joined');

    const outsider = await h.connect(srv, other.patient.token);
    assertError(await h.ack(outsider, 'media-state', { audio: true, video: true }), 'forbidden');
    assertError(
      await h.ack(p.socket, 'media-state', { roomId: other.appt.id, audio: false, video: false }),
      'forbidden',
    );
    for (const bad of [
      { audio: true },
      { audio: 'off', video: true },
      { audio: 0, video: 1 },
      { audio: true, video: true, speaking: true },
      { audio: true, video: true, screen: 'yes' },
      { roomId: '../x', audio: true, video: true },
      { audio: true, video: true, screenTrackId: 't1' },
      { audio: true, video: true, screen: true, screenTrackId: 'a b' },
      [true, true],
      'muted',
    ]) {
      assertError(await h.ack(p.socket, 'media-state', bad), 'invalid_payload');
    }
    await h.noEvent(d.socket, 'media-state');
    // And nothing was remembered: a later joiner sees no state for the patient.
    const admin = await h.user(srv, 'admin');
    const a = await joined(admin, appt);
    assert.ok(a.ack.peers.every((peer) => peer.media === undefined), JSON.stringify(a.ack.peers));
  });

  test('a member back on a new connection starts without a state', T, async () => {
    const { patient, doctor, appt } = await consult();
    const d = await joined(doctor, appt);
    const p = await joined(patient, appt);
    await h.nextEvent(d.socket, 'peer-joined');
    await h.ack(p.socket, 'media-state', { audio: false, video: true });
    await h.nextEvent(d.socket, 'media-state');
    const back = await h.connect(srv, patient.token);
    const ack = await h.ack(back, 'join-room', { appointmentId: appt.id, previousSocketId: p.socket.id });
    assert.equal(ack.ok, true);
    const joinedAgain = await h.nextEvent(d.socket, 'peer-joined');
    assert.equal(joinedAgain.replaces, p.socket.id);
    assert.equal(joinedAgain.media, undefined);
  });
});

describe('call-media-state in a direct call', () => {
  test('goes to the other party only, both ways, and not to outsiders', T, async () => {
    const { patient, doctor } = await consult();
    const sd = await h.connect(srv, doctor.token);
    const sp = await h.connect(srv, patient.token);
    const placed = await h.ack(sd, 'call-user', { to: patient.id, callType: 'video', offer: { type: 'offer', sdp: h.sdp('offer') } });
    assert.equal(placed.ok, true, JSON.stringify(placed));
    const { callId } = placed;
    await h.nextEvent(sp, 'incoming-call');
    assert.equal((await h.ack(sp, 'answer-call', { callId, answer: { type: 'answer', sdp: h.sdp('answer') } })).ok, true);
    await h.nextEvent(sd, 'call-answered');

    assert.deepEqual(await h.ack(sp, 'call-media-state', { callId, audio: false, video: true }), { ok: true });
    assert.deepEqual(await h.nextEvent(sd, 'call-media-state'), {
      callId, userId: patient.id, audio: false, video: true, screen: false,
    });
    assert.deepEqual(await h.ack(sd, 'call-media-state', { callId, audio: true, video: true, screen: true }), { ok: true });
    assert.deepEqual(await h.nextEvent(sp, 'call-media-state'), {
      callId, userId: doctor.id, audio: true, video: true, screen: true,
    });

    const stranger = await h.user(srv, 'patient');
    const ss = await h.connect(srv, stranger.token);
    assertError(await h.ack(ss, 'call-media-state', { callId, audio: true, video: true }), 'forbidden');
    assertError(await h.ack(sp, 'call-media-state', { callId: 'no-such-call', audio: true, video: true }), 'not_found');
    assertError(await h.ack(sp, 'call-media-state', { callId, audio: true }), 'invalid_payload');
    assertError(await h.ack(sp, 'call-media-state', { callId, audio: true, video: true, roomId: 'x' }), 'invalid_payload');
    await h.noEvent(sd, 'call-media-state');
  });
});
