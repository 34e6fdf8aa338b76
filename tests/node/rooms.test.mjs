// Consult rooms over the official socket.io-client: connection auth, join/leave, peer lists,
// signal relay and its refusals, chat with its transcript, the chat rate limit, and garbage input.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import * as h from './harness.mjs';

const T = { timeout: 20000 };

let srv; // default limits, but a chat burst large enough that refusal tests meet validation
let limited; // chat: 1 per second, burst 3

before(async () => {
  [srv, limited] = await Promise.all([
    // The budget is spent before a payload is checked, so the default burst (10) would turn the
    // later refusals of a long list of bad messages into rate_limited.
    h.startServer({ env: { CALLRELAY_LIMITS__CHAT_BURST: '200' } }),
    h.startServer({
      env: { CALLRELAY_LIMITS__CHAT_RATE_PER_SEC: '1', CALLRELAY_LIMITS__CHAT_BURST: '3' },
    }),
  ]);
});
after(h.cleanup);
afterEach(h.closeSockets);

/** A patient, a doctor and a confirmed appointment between them. */
async function consult(server = srv) {
  const patient = await h.user(server, 'patient');
  const doctor = await h.user(server, 'doctor');
  const appt = await h.appointment(server, patient, doctor);
  return { patient, doctor, appt };
}

/** The Peer a member is announced as. */
function peerOf(socket, u, avatarSeed = u.id) {
  return { socketId: socket.id, userId: u.id, name: u.name, role: u.role, avatarSeed };
}

/** Connects `u` and joins `appt`; returns the socket after its ack and existing-peers. */
async function joined(server, u, appt, extra = {}) {
  const socket = await h.connect(server, u.token);
  const res = await h.ack(socket, 'join-room', { appointmentId: appt.id, ...extra });
  assert.equal(res.ok, true, `join-room for ${u.id}: ${JSON.stringify(res)}`);
  await h.nextEvent(socket, 'existing-peers');
  return socket;
}

function assertError(res, code) {
  assert.equal(res.ok, false, `expected error ${code}, got ${JSON.stringify(res)}`);
  assert.equal(res.error?.code, code, `expected ${code}, got ${JSON.stringify(res)}`);
  assert.equal(typeof res.error.message, 'string');
}

describe('connection', () => {
  test('a token from POST /api/dev/token or signed with the secret connects', T, async () => {
    const u = await h.user(srv, 'patient');
    const s1 = await h.connect(srv, u.token);
    assert.equal(s1.connected, true);
    const now = Math.floor(Date.now() / 1000);
    const own = h.signJwt({ sub: h.uid('p'), name: 'Self Signed', role: 'patient', iat: now, exp: now + 600 });
    const s2 = await h.connect(srv, own);
    assert.equal(s2.connected, true);
  });

  test('no, bad, forged, expired, alg:none and unknown-role tokens get connect_error "unauthorized"', T, async () => {
    const now = Math.floor(Date.now() / 1000);
    const claims = { sub: h.uid('p'), name: 'Mallory', role: 'patient', iat: now - 120, exp: now + 600 };
    const cases = {
      'no auth at all': undefined,
      'no token field': null,
      'empty token': '',
      'not a JWT': 'not-a-jwt',
      'another secret': h.signJwt(claims, { secret: 'some-other-secret' }),
      expired: h.signJwt({ ...claims, iat: now - 7200, exp: now - 3600 }),
      'alg none': h.signJwt(claims, { alg: 'none' }),
      'unknown role': h.signJwt({ ...claims, role: 'superuser' }),
    };
    for (const [label, tok] of Object.entries(cases)) {
      const opts = tok === null ? { auth: {} } : {};
      const err = await h.connectError(srv, tok, opts);
      assert.equal(err.message, 'unauthorized', `${label}: connect_error message`);
    }
    // The refusals left the server serving.
    const u = await h.user(srv, 'doctor');
    assert.equal((await h.connect(srv, u.token)).connected, true);
  });

  test('an event emitted at once (buffered before connect, as browsers do) is handled and acked', T, async () => {
    // socket.io-client queues emits made before the connection is up and sends them right after
    // the CONNECT packet; none may be lost.
    const { patient, doctor, appt } = await consult();
    const rounds = 6;
    const failures = [];
    for (let i = 0; i < rounds; i++) {
      const u = i % 2 ? patient : doctor;
      const s = h.socket(srv, u.token);
      const acked = s.timeout(1500).emitWithAck('join-room', { appointmentId: appt.id })
        .then((res) => res, (err) => ({ lost: err.message }));
      s.connect();
      const res = await acked;
      if (res.ok !== true || res.selfId !== s.id) failures.push(`round ${i}: ${JSON.stringify(res)}`);
      h.closeSocket(s);
    }
    assert.deepEqual(failures, [], `events sent right after connecting were not handled (${failures.length}/${rounds})`);
  });

  test('the default transports (polling, then upgrade to websocket) carry a consult', T, async () => {
    const { patient, doctor, appt } = await consult();
    const sp = await h.connect(srv, patient.token, { transports: ['polling', 'websocket'] });
    const engine = sp.io.engine;
    if (engine.transport.name !== 'websocket') {
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no upgrade to websocket within 5 s')), 5000);
        engine.once('upgrade', () => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    assert.equal(engine.transport.name, 'websocket');
    const res = await h.ack(sp, 'join-room', { appointmentId: appt.id });
    assert.equal(res.ok, true);
    assert.equal(res.selfId, sp.id);
    const sd = await joined(srv, doctor, appt);
    assert.deepEqual(await h.nextEvent(sp, 'peer-joined'), peerOf(sd, doctor));
    const sent = await h.ack(sd, 'chat-message', { text: 'over the upgraded transport' });
    assert.equal(sent.ok, true);
    assert.deepEqual(await h.nextEvent(sp, 'chat-message'), sent.message);
  });

  test('polling only also works end to end', T, async () => {
    const { patient, doctor, appt } = await consult();
    const sp = await h.connect(srv, patient.token, { transports: ['polling'], upgrade: false });
    assert.equal(sp.io.engine.transport.name, 'polling');
    assert.equal((await h.ack(sp, 'join-room', { appointmentId: appt.id })).ok, true);
    const sd = await joined(srv, doctor, appt);
    const offer = { type: 'offer', sdp: h.sdp('offer') };
    assert.equal((await h.ack(sd, 'signal', { to: sp.id, type: 'offer', payload: offer })).ok, true);
    assert.deepEqual(await h.nextEvent(sp, 'signal'), {
      from: sd.id, fromUserId: doctor.id, type: 'offer', payload: offer,
    });
  });
});

describe('join-room', () => {
  test('ack, existing-peers, peer-joined and avatar seeds', T, async () => {
    const { patient, doctor, appt } = await consult();
    const sp = await h.connect(srv, patient.token);
    const first = await h.ack(sp, 'join-room', { appointmentId: appt.id, avatarSeed: 'fox-7' });
    assert.deepEqual(first, {
      ok: true,
      selfId: sp.id,
      peers: [],
      mode: 'p2p-first',
      p2pTimeoutMs: 5000,
      iceServers: [],
    });
    assert.deepEqual(await h.nextEvent(sp, 'existing-peers'), []);

    const sd = await h.connect(srv, doctor.token);
    const second = await h.ack(sd, 'join-room', { appointmentId: appt.id });
    const patientPeer = peerOf(sp, patient, 'fox-7');
    assert.equal(second.ok, true);
    assert.equal(second.selfId, sd.id);
    assert.deepEqual(second.peers, [patientPeer]);
    assert.equal(second.mode, 'p2p-first');
    assert.equal(second.p2pTimeoutMs, 5000);
    assert.deepEqual(second.iceServers, []);
    assert.deepEqual(await h.nextEvent(sd, 'existing-peers'), [patientPeer]);
    // The doctor gave no avatarSeed: it defaults to the user id.
    assert.deepEqual(await h.nextEvent(sp, 'peer-joined'), peerOf(sd, doctor));
    // Two members: still peer-to-peer, and nobody is told about themselves.
    await h.noEvent(sp, 'relay-activated', 200);
    await h.noEvent(sd, 'relay-activated', 0);
    await h.noEvent(sd, 'peer-joined', 0);
  });

  test('two members joining at the same moment each learn about the other', T, async () => {
    for (let round = 0; round < 5; round++) {
      const { patient, doctor, appt } = await consult();
      const sp = await h.connect(srv, patient.token);
      const sd = await h.connect(srv, doctor.token);
      const [ap, ad] = await Promise.all([
        h.ack(sp, 'join-room', { appointmentId: appt.id }),
        h.ack(sd, 'join-room', { appointmentId: appt.id }),
      ]);
      assert.equal(ap.ok && ad.ok, true);
      // Exactly one of them joined first; that one hears peer-joined, the other lists it.
      const [firstSock, lateSock, lateAck, firstUser, lateUser] = ap.peers.length === 0
        ? [sp, sd, ad, patient, doctor]
        : [sd, sp, ap, doctor, patient];
      assert.deepEqual(lateAck.peers, [peerOf(firstSock, firstUser)], `round ${round}`);
      assert.deepEqual(await h.nextEvent(firstSock, 'peer-joined'), peerOf(lateSock, lateUser), `round ${round}`);
      h.closeSockets();
    }
  });

  test('the third member relays the room: everyone gets relay-activated room-size', T, async () => {
    const { patient, doctor, appt } = await consult();
    const admin = await h.user(srv, 'admin');
    const sp = await joined(srv, patient, appt);
    const sd = await joined(srv, doctor, appt);
    await h.nextEvent(sp, 'peer-joined');

    const sa = await h.connect(srv, admin.token);
    const res = await h.ack(sa, 'join-room', { appointmentId: appt.id, avatarSeed: 'owl' });
    assert.equal(res.ok, true);
    // Peers in join order.
    assert.deepEqual(res.peers, [peerOf(sp, patient), peerOf(sd, doctor)]);
    assert.deepEqual(await h.nextEvent(sa, 'existing-peers'), [peerOf(sp, patient), peerOf(sd, doctor)]);
    const adminPeer = peerOf(sa, admin, 'owl');
    assert.deepEqual(await h.nextEvent(sp, 'peer-joined'), adminPeer);
    assert.deepEqual(await h.nextEvent(sd, 'peer-joined'), adminPeer);
    for (const s of [sp, sd, sa]) {
      assert.deepEqual(await h.nextEvent(s, 'relay-activated'), { roomId: appt.id, reason: 'room-size' });
    }
  });

  test('leave-room and disconnect tell the others with peer-left', T, async () => {
    const { patient, doctor, appt } = await consult();
    const admin = await h.user(srv, 'admin');
    const sp = await joined(srv, patient, appt);
    const sd = await joined(srv, doctor, appt);
    const sa = await joined(srv, admin, appt);
    const adminId = sa.id;

    assert.deepEqual(await h.ack(sa, 'leave-room', {}), { ok: true });
    assert.deepEqual(await h.nextEvent(sp, 'peer-left'), { socketId: adminId, userId: admin.id, reason: 'left' });
    assert.deepEqual(await h.nextEvent(sd, 'peer-left'), { socketId: adminId, userId: admin.id, reason: 'left' });
    // Out of the room: no chat, no signalling to the members, nothing from them.
    assertError(await h.ack(sa, 'chat-message', { text: 'still here?' }), 'forbidden');
    assertError(await h.ack(sa, 'signal', { to: sp.id, type: 'ice-candidate', payload: null }), 'forbidden');
    assert.equal((await h.ack(sp, 'chat-message', { text: 'admin left' })).ok, true);
    await h.noEvent(sa, 'chat-message', 300);
    await h.noEvent(sp, 'signal', 0);
    // Leaving again is harmless.
    assert.deepEqual(await h.ack(sa, 'leave-room', {}), { ok: true });

    const doctorSocketId = sd.id;
    h.closeSocket(sd);
    assert.deepEqual(await h.nextEvent(sp, 'peer-left'), {
      socketId: doctorSocketId,
      userId: doctor.id,
      reason: 'disconnected',
    });
    assertError(
      await h.ack(sp, 'signal', { to: doctorSocketId, type: 'ice-candidate', payload: null }),
      'forbidden',
    );
    // A leave-room with no payload at all is fine too.
    assert.deepEqual(await h.ack(sp, 'leave-room'), { ok: true });
  });

  test('back on a new connection: previousSocketId ends the old membership at once, only the same user\'s', T, async () => {
    const { patient, doctor, appt } = await consult();
    const sp = await joined(srv, patient, appt);
    const sd = await joined(srv, doctor, appt);
    await h.nextEvent(sp, 'peer-joined');
    const oldId = sd.id;
    const oldGone = new Promise((resolve) => sd.once('disconnect', resolve));

    // The doctor's network changed: a new connection, while the old one still looks alive.
    const sd2 = await h.connect(srv, doctor.token);
    const res = await h.ack(sd2, 'join-room', { appointmentId: appt.id, previousSocketId: oldId });
    assert.equal(res.ok, true, JSON.stringify(res));
    assert.deepEqual(res.peers.map((p) => p.socketId), [sp.id], 'the old membership is not a peer');
    assert.deepEqual(await h.nextEvent(sp, 'peer-left'), {
      socketId: oldId,
      userId: doctor.id,
      reason: 'replaced',
      replacedBy: sd2.id,
    });
    const back = await h.nextEvent(sp, 'peer-joined');
    assert.equal(back.socketId, sd2.id);
    assert.equal(back.replaces, oldId, 'the newcomer says whom it replaces');
    await oldGone; // the server closed the replaced connection
    assertError(await h.ack(sp, 'signal', { to: oldId, type: 'ice-candidate', payload: null }), 'forbidden');

    // A member joining later sees it with what it replaced (kept while it is in the room).
    const admin0 = await h.user(srv, 'admin');
    const s0 = await h.connect(srv, admin0.token);
    const seen = await h.ack(s0, 'join-room', { appointmentId: appt.id });
    assert.equal(seen.peers.find((p) => p.socketId === sd2.id)?.replaces, oldId);
    assert.equal(seen.peers.find((p) => p.socketId === sp.id)?.replaces, undefined);
    assert.equal((await h.ack(s0, 'leave-room', {})).ok, true);
    await h.nextEvent(sd2, 'peer-left');

    // Naming someone else's socket ends nothing: the patient stays.
    const admin = await h.user(srv, 'admin');
    const sa = await h.connect(srv, admin.token);
    assert.equal((await h.ack(sa, 'join-room', { appointmentId: appt.id, previousSocketId: sp.id })).ok, true);
    await h.noEvent(sd2, 'peer-left', 300);
    assert.equal(sp.connected, true);
    // A malformed id is refused like any bad payload.
    assertError(await h.ack(sa, 'join-room', { appointmentId: appt.id, previousSocketId: 42 }), 'invalid_payload');
  });

  test('back after the server noticed the old connection end: the newcomer still says whom it replaces', T, async () => {
    const { patient, doctor, appt } = await consult();
    const sp = await joined(srv, patient, appt);
    const sd = await joined(srv, doctor, appt);
    await h.nextEvent(sp, 'peer-joined');
    const oldId = sd.id;
    h.closeSocket(sd);
    assert.deepEqual(await h.nextEvent(sp, 'peer-left'), { socketId: oldId, userId: doctor.id, reason: 'disconnected' });
    const sd2 = await h.connect(srv, doctor.token);
    assert.equal((await h.ack(sd2, 'join-room', { appointmentId: appt.id, previousSocketId: oldId })).ok, true);
    const back = await h.nextEvent(sp, 'peer-joined');
    assert.equal(back.replaces, oldId);
    // The patient cannot claim the doctor's old membership.
    const sp2 = await h.connect(srv, patient.token);
    assert.equal((await h.ack(sp2, 'join-room', { appointmentId: appt.id, previousSocketId: oldId })).ok, true);
    assert.equal((await h.nextEvent(sd2, 'peer-joined')).replaces, undefined);
  });

  test('joining another room leaves the current one', T, async () => {
    const doctor = await h.user(srv, 'doctor');
    const p1 = await h.user(srv, 'patient');
    const p2 = await h.user(srv, 'patient');
    const a1 = await h.appointment(srv, p1, doctor);
    const a2 = await h.appointment(srv, p2, doctor);
    const s1 = await joined(srv, p1, a1);
    const s2 = await joined(srv, p2, a2);
    const sd = await joined(srv, doctor, a1);
    assert.deepEqual(await h.nextEvent(s1, 'peer-joined'), peerOf(sd, doctor));

    const res = await h.ack(sd, 'join-room', { appointmentId: a2.id });
    assert.equal(res.ok, true);
    assert.deepEqual(res.peers, [peerOf(s2, p2)]);
    assert.deepEqual(await h.nextEvent(s1, 'peer-left'), { socketId: sd.id, userId: doctor.id, reason: 'left' });
    assert.deepEqual(await h.nextEvent(s2, 'peer-joined'), peerOf(sd, doctor));

    // Now in room 2 only: room 1 is out of reach both ways, chat goes to room 2.
    assertError(await h.ack(sd, 'signal', { to: s1.id, type: 'ice-candidate', payload: null }), 'forbidden');
    assertError(await h.ack(s1, 'signal', { to: sd.id, type: 'ice-candidate', payload: null }), 'forbidden');
    const sent = await h.ack(sd, 'chat-message', { text: 'for room two' });
    assert.equal(sent.ok, true);
    assert.equal(sent.message.appointmentId, a2.id);
    assert.deepEqual(await h.nextEvent(s2, 'chat-message'), sent.message);
    await h.noEvent(s1, 'chat-message', 300);
    await h.noEvent(s1, 'signal', 0);
    await h.noEvent(sd, 'signal', 0);
    const t1 = await h.api(srv, 'GET', `/api/appointments/${a1.id}/messages`, { token: doctor.token });
    assert.deepEqual(t1.body, { messages: [] });
  });

  test('refusals: unknown, outsider, staff, unconfirmed, cancelled, malformed', T, async () => {
    const { patient, doctor, appt } = await consult();
    const sp = await joined(srv, patient, appt);

    const tryJoin = async (u, payload) => {
      const s = await h.connect(srv, u.token);
      const res = await h.ack(s, 'join-room', payload);
      return { s, res };
    };

    // Unknown appointment.
    const unknown = await tryJoin(patient, { appointmentId: h.uid('appt') });
    assertError(unknown.res, 'not_found');

    // Not its patient, not its doctor, not an admin (staff included).
    const outsiders = [await h.user(srv, 'patient'), await h.user(srv, 'doctor'), await h.user(srv, 'staff')];
    const refused = [unknown.s];
    for (const u of outsiders) {
      const { s, res } = await tryJoin(u, { appointmentId: appt.id });
      assertError(res, 'forbidden');
      refused.push(s);
    }

    // Pending (never confirmed) and cancelled appointments: not even its own parties get in.
    const pending = await h.appointment(srv, patient, doctor, { confirm: false });
    for (const u of [patient, doctor]) {
      const { s, res } = await tryJoin(u, { appointmentId: pending.id });
      assertError(res, 'forbidden');
      refused.push(s);
    }
    const cancelledAppt = await h.appointment(srv, patient, doctor);
    const cancel = await h.api(srv, 'POST', `/api/appointments/${cancelledAppt.id}/cancel`, { token: doctor.token });
    assert.equal(cancel.status, 200);
    assert.equal(cancel.body.status, 'cancelled');
    for (const u of [patient, doctor, await h.user(srv, 'admin')]) {
      const { s, res } = await tryJoin(u, { appointmentId: cancelledAppt.id });
      assertError(res, 'forbidden');
      refused.push(s);
    }

    // Malformed payloads.
    for (const payload of [{}, { appointmentId: 42 }, { appointmentId: '' }, 'just-a-string', { appointmentId: 'a b/../c' }]) {
      const { s, res } = await tryJoin(doctor, payload);
      assertError(res, 'invalid_payload');
      refused.push(s);
    }

    // None of them got in: the member heard nothing, and they cannot chat or reach the member.
    await h.noEvent(sp, 'peer-joined', 300);
    for (const s of refused) {
      assertError(await h.ack(s, 'chat-message', { text: 'hello?' }), 'forbidden');
      assertError(await h.ack(s, 'signal', { to: sp.id, type: 'ice-candidate', payload: null }), 'forbidden');
    }
    await h.noEvent(sp, 'signal', 100);
    await h.noEvent(sp, 'chat-message', 0);
  });
});

describe('signal', () => {
  test('offers, answers and candidates reach only the addressed member, as sent', T, async () => {
    const { patient, doctor, appt } = await consult();
    const admin = await h.user(srv, 'admin');
    const sp = await joined(srv, patient, appt);
    const sd = await joined(srv, doctor, appt);
    const sa = await joined(srv, admin, appt);

    const offer = { type: 'offer', sdp: h.sdp('offer') };
    assert.deepEqual(await h.ack(sp, 'signal', { to: sd.id, type: 'offer', payload: offer }), { ok: true });
    assert.deepEqual(await h.nextEvent(sd, 'signal'), {
      from: sp.id, fromUserId: patient.id, type: 'offer', payload: offer,
    });

    const answer = h.sdp('answer'); // a plain SDP string
    assert.deepEqual(await h.ack(sd, 'signal', { to: sp.id, type: 'answer', payload: answer }), { ok: true });
    assert.deepEqual(await h.nextEvent(sp, 'signal'), {
      from: sd.id, fromUserId: doctor.id, type: 'answer', payload: answer,
    });

    const cand = h.candidate(3);
    assert.deepEqual(await h.ack(sd, 'signal', { to: sp.id, type: 'ice-candidate', payload: cand }), { ok: true });
    assert.deepEqual(await h.nextEvent(sp, 'signal'), {
      from: sd.id, fromUserId: doctor.id, type: 'ice-candidate', payload: cand,
    });
    // End of candidates.
    assert.deepEqual(await h.ack(sp, 'signal', { to: sd.id, type: 'ice-candidate', payload: null }), { ok: true });
    assert.deepEqual(await h.nextEvent(sd, 'signal'), {
      from: sp.id, fromUserId: patient.id, type: 'ice-candidate', payload: null,
    });

    // The third member was never addressed and got none of it; nobody got an echo.
    await h.noEvent(sa, 'signal', 300);
    await h.noEvent(sp, 'signal', 0);
    await h.noEvent(sd, 'signal', 0);
  });

  test('an offer followed at once by candidates arrives in order', T, async () => {
    const { patient, doctor, appt } = await consult();
    const sp = await joined(srv, patient, appt);
    const sd = await joined(srv, doctor, appt);
    const offer = { type: 'offer', sdp: h.sdp('offer') };
    const acks = [h.ack(sp, 'signal', { to: sd.id, type: 'offer', payload: offer })];
    for (let i = 1; i <= 12; i++) {
      acks.push(h.ack(sp, 'signal', { to: sd.id, type: 'ice-candidate', payload: h.candidate(i) }));
    }
    acks.push(h.ack(sp, 'signal', { to: sd.id, type: 'ice-candidate', payload: null }));
    for (const res of await Promise.all(acks)) assert.deepEqual(res, { ok: true });

    const got = [];
    for (let i = 0; i < 14; i++) got.push(await h.nextEvent(sd, 'signal'));
    assert.deepEqual(got[0].payload, offer);
    assert.deepEqual(got.slice(1, 13).map((g) => g.payload), Array.from({ length: 12 }, (_, i) => h.candidate(i + 1)));
    assert.equal(got[13].payload, null);
    assert.deepEqual(got.map((g) => g.type), ['offer', ...Array(13).fill('ice-candidate')]);
  });

  test('refused: outsider, other room, unknown socket, self', T, async () => {
    const a = await consult();
    const b = await consult();
    const sp = await joined(srv, a.patient, a.appt);
    const sd = await joined(srv, a.doctor, a.appt);
    const other = await joined(srv, b.patient, b.appt);
    const outsiderUser = await h.user(srv, 'patient');
    const outsider = await h.connect(srv, outsiderUser.token);
    const offer = { type: 'offer', sdp: h.sdp('offer') };

    // A socket in no room, and a member of another room, cannot reach this room, nor be reached.
    assertError(await h.ack(outsider, 'signal', { to: sd.id, type: 'offer', payload: offer }), 'forbidden');
    assertError(await h.ack(other, 'signal', { to: sd.id, type: 'offer', payload: offer }), 'forbidden');
    assertError(await h.ack(sd, 'signal', { to: other.id, type: 'offer', payload: offer }), 'forbidden');
    assertError(await h.ack(sd, 'signal', { to: outsider.id, type: 'offer', payload: offer }), 'forbidden');
    // A socket id that does not exist.
    assertError(await h.ack(sd, 'signal', { to: 'NoSuchSocket0001', type: 'offer', payload: offer }), 'forbidden');

    for (const s of [sp, sd, other, outsider]) await h.noEvent(s, 'signal', s === sp ? 300 : 0);
  });

  test('oversized and malformed payloads are refused and not relayed', T, async () => {
    const { patient, doctor, appt } = await consult();
    const sp = await joined(srv, patient, appt);
    const sd = await joined(srv, doctor, appt);
    const to = sd.id;

    // Over limits.max_sdp_bytes (65536) but under the socket message limit.
    const bigSdp = h.sdp('offer', `a=x-pad:${'a'.repeat(70000)}`);
    assertError(await h.ack(sp, 'signal', { to, type: 'offer', payload: { type: 'offer', sdp: bigSdp } }), 'too_large');
    assertError(await h.ack(sp, 'signal', { to, type: 'answer', payload: bigSdp }), 'too_large');
    // Over limits.max_candidate_bytes (2048).
    const bigCand = { ...h.candidate(1), candidate: `candidate:1 1 udp 1 10.0.0.1 9 typ host ${'x'.repeat(3000)}` };
    assertError(await h.ack(sp, 'signal', { to, type: 'ice-candidate', payload: bigCand }), 'too_large');
    // Just under the SDP limit is fine (in lines of at most 4096 bytes, the line limit).
    const okSdp = h.sdp('offer', Array.from({ length: 600 }, (_, i) => `a=x-pad-${i}:${'a'.repeat(90)}`).join('\r\n'));
    assert.ok(okSdp.length > 60000 && okSdp.length < 65536);
    assert.deepEqual(await h.ack(sp, 'signal', { to, type: 'offer', payload: okSdp }), { ok: true });
    assert.equal((await h.nextEvent(sd, 'signal')).payload, okSdp);

    const malformed = [
      { to, type: 'bogus', payload: { type: 'offer', sdp: h.sdp() } },
      { to, type: 'offer', payload: { type: 'offer' } },
      { to, type: 'offer', payload: 'hello, not an sdp' },
      { to, type: 'offer', payload: { type: 'offer', sdp: 'o=- 1 1 IN IP4 0.0.0.0' } },
      { to, type: 'answer', payload: 42 },
      { to, type: 'answer', payload: null },
      { to, type: 'ice-candidate', payload: 'candidate:1 1 udp 1 1.2.3.4 9 typ host' },
      { to, type: 'ice-candidate', payload: { candidate: 5 } },
      { to, type: 'ice-candidate', payload: { sdpMid: '0' } },
      { to, type: 'ice-candidate', payload: [] },
      { to, type: 'offer' },
      { type: 'offer', payload: h.sdp() },
      { to: 17, type: 'offer', payload: h.sdp() },
      { to, payload: h.sdp() },
      'offer',
      null,
    ];
    for (const m of malformed) {
      assertError(await h.ack(sp, 'signal', m), 'invalid_payload');
    }
    await h.noEvent(sd, 'signal', 300);
  });
});

describe('chat', () => {
  test('broadcast to the room incl. sender, identity from the token, stored before broadcast', T, async () => {
    const { patient, doctor, appt } = await consult();
    const admin = await h.user(srv, 'admin');
    const sp = await joined(srv, patient, appt);
    const sd = await joined(srv, doctor, appt);
    const outsider = await h.connect(srv, (await h.user(srv, 'patient')).token);

    // The transcript is read the moment the doctor sees the message.
    const seenByDoctor = h.nextEvent(sd, 'chat-message').then(async (m) => ({
      m,
      transcript: await h.api(srv, 'GET', `/api/appointments/${appt.id}/messages`, { token: doctor.token }),
    }));
    const before = Date.now();
    const res = await h.ack(sp, 'chat-message', {
      text: 'Hello doctor',
      from: { userId: admin.id, name: 'Mallory', role: 'admin' },
    });
    const afterAck = Date.now();
    assert.equal(res.ok, true);
    const m1 = res.message;
    assert.equal(typeof m1.id, 'string');
    assert.ok(m1.id.length > 0);
    assert.deepEqual(m1, {
      id: m1.id,
      appointmentId: appt.id,
      from: { userId: patient.id, name: patient.name, role: 'patient' },
      text: 'Hello doctor',
      sentAt: m1.sentAt,
    });
    assert.match(m1.sentAt, h.RFC3339_MS_UTC);
    const sentAt = Date.parse(m1.sentAt);
    assert.ok(sentAt >= before - 2000 && sentAt <= afterAck + 2000, `sentAt ${m1.sentAt} is the server clock`);
    assert.deepEqual(await h.nextEvent(sp, 'chat-message'), m1, 'the sender gets it too');
    const { m, transcript } = await seenByDoctor;
    assert.deepEqual(m, m1);
    assert.equal(transcript.status, 200);
    assert.deepEqual(transcript.body.messages.map((x) => x.id), [m1.id], 'stored before it was broadcast');
    await h.noEvent(outsider, 'chat-message', 200);

    // A reply, and a 2000-character message (characters, not bytes: '€' is 3 bytes in UTF-8).
    const r2 = await h.ack(sd, 'chat-message', { text: 'Hi! How are you feeling?' });
    assert.equal(r2.ok, true);
    assert.deepEqual(r2.message.from, { userId: doctor.id, name: doctor.name, role: 'doctor' });
    const long = '€'.repeat(2000);
    const r3 = await h.ack(sp, 'chat-message', { text: long });
    assert.equal(r3.ok, true);
    assert.equal(r3.message.text, long);
    for (const s of [sp, sd]) {
      assert.deepEqual(await h.nextEvent(s, 'chat-message'), r2.message);
      assert.deepEqual(await h.nextEvent(s, 'chat-message'), r3.message);
    }
    assert.ok(Date.parse(r2.message.sentAt) >= Date.parse(m1.sentAt));
    assert.ok(Date.parse(r3.message.sentAt) >= Date.parse(r2.message.sentAt));

    // The transcript: oldest first, identical to what was broadcast, for its patient, doctor, admin.
    for (const who of [patient, doctor, admin]) {
      const t = await h.api(srv, 'GET', `/api/appointments/${appt.id}/messages`, { token: who.token });
      assert.equal(t.status, 200, `transcript for ${who.role}`);
      assert.deepEqual(t.body, { messages: [m1, r2.message, r3.message] });
    }
    const staff = await h.user(srv, 'staff');
    const stranger = await h.user(srv, 'patient');
    for (const who of [staff, stranger]) {
      const t = await h.api(srv, 'GET', `/api/appointments/${appt.id}/messages`, { token: who.token });
      assert.equal(t.status, 403, `transcript for ${who.role} outsider`);
      assert.equal(t.body.error.code, 'forbidden');
    }
    assert.equal((await h.api(srv, 'GET', `/api/appointments/${appt.id}/messages`)).status, 401);
    const missing = await h.api(srv, 'GET', `/api/appointments/${h.uid('nope')}/messages`, { token: admin.token });
    assert.equal(missing.status, 404);
  });

  test('refused: outside a room, empty, whitespace, too long, not text — nothing stored or sent', T, async () => {
    const { patient, doctor, appt } = await consult();
    const loner = await h.connect(srv, patient.token);
    assertError(await h.ack(loner, 'chat-message', { text: 'anyone?' }), 'forbidden');

    const sp = await joined(srv, patient, appt);
    const sd = await joined(srv, doctor, appt);
    for (const text of ['', '   ', ' \n\t ']) {
      assertError(await h.ack(sp, 'chat-message', { text }), 'invalid_payload');
    }
    assertError(await h.ack(sp, 'chat-message', { text: 'x'.repeat(2001) }), 'too_large');
    assertError(await h.ack(sp, 'chat-message', { text: '€'.repeat(2001) }), 'too_large');
    for (const bad of [{}, { text: 12 }, { text: null }, { text: ['a'] }, 'plain string', 7]) {
      assertError(await h.ack(sp, 'chat-message', bad), 'invalid_payload');
    }
    await h.noEvent(sd, 'chat-message', 300);
    await h.noEvent(sp, 'chat-message', 0);
    const t = await h.api(srv, 'GET', `/api/appointments/${appt.id}/messages`, { token: patient.token });
    assert.deepEqual(t.body, { messages: [] });
  });

  test('rate limit: with rate 1/s and burst 3 the 4th immediate message is refused and not stored', T, async () => {
    const { patient, doctor, appt } = await consult(limited);
    const sp = await joined(limited, patient, appt);
    const sd = await joined(limited, doctor, appt);

    const acks = await Promise.all([1, 2, 3, 4].map((n) => h.ack(sp, 'chat-message', { text: `message ${n}` })));
    assert.deepEqual(acks.slice(0, 3).map((a) => a.ok), [true, true, true]);
    assertError(acks[3], 'rate_limited');
    for (let i = 0; i < 3; i++) assert.equal((await h.nextEvent(sd, 'chat-message')).text, `message ${i + 1}`);
    await h.noEvent(sd, 'chat-message', 300);

    // The budget is per socket: the doctor is not affected.
    const fromDoctor = await h.ack(sd, 'chat-message', { text: 'doctor speaking' });
    assert.equal(fromDoctor.ok, true);
    // One token per second comes back.
    await h.sleep(1100);
    const later = await h.ack(sp, 'chat-message', { text: 'message 5' });
    assert.equal(later.ok, true);

    const t = await h.api(limited, 'GET', `/api/appointments/${appt.id}/messages`, { token: doctor.token });
    assert.deepEqual(t.body.messages.map((m) => m.text), ['message 1', 'message 2', 'message 3', 'doctor speaking', 'message 5']);
  });
});

describe('robustness', () => {
  test('garbage to every event is refused, and the server keeps serving', T, async () => {
    const events = [
      'join-room', 'signal', 'chat-message', 'leave-room',
      'join', 'call-user', 'answer-call', 'reject-call', 'end-call', 'ice-candidate',
    ];
    let deep = {};
    for (let i = 0; i < 1500; i++) deep = { a: deep };
    let deepArr = [];
    for (let i = 0; i < 1500; i++) deepArr = [deepArr];
    const wide = Object.fromEntries(Array.from({ length: 5000 }, (_, i) => [`k${i}`, i]));
    const garbage = ['x', 42, -1.5, true, [1, 2, 3], deep, deepArr, wide, { to: { $ne: null } }, { text: { toString: 'x' } }];

    const attacker = await h.user(srv, 'patient');
    const bad = await h.connect(srv, attacker.token);
    for (const ev of events) {
      for (const g of garbage) {
        const res = await h.ack(bad, ev, g);
        if (ev === 'leave-room' && (typeof g === 'object' && (!Array.isArray(g) || g === deepArr))) {
          // leave-room takes {} (or nothing) and ignores what it does not know; a payload too
          // deep to parse counts as none.
          assert.equal(typeof res.ok, 'boolean');
        } else {
          assertError(res, 'invalid_payload');
        }
      }
      // Missing fields.
      if (ev !== 'leave-room') assertError(await h.ack(bad, ev, {}), 'invalid_payload');
      // Without an ack callback, and with extra arguments.
      bad.emit(ev, 'garbage');
      bad.emit(ev, { nonsense: true }, 'second', 3);
    }
    assert.equal(bad.connected, true);

    // A message over the socket message limit (131072 bytes) must not take the server down.
    const flood = await h.connect(srv, attacker.token);
    await h.ack(flood, 'chat-message', { text: 'x'.repeat(300000) }).catch(() => null);

    // A normal consult still works, including for the socket that sent the garbage.
    const { patient, doctor, appt } = await consult();
    const sp = await joined(srv, patient, appt);
    const sd = await joined(srv, doctor, appt);
    const offer = { type: 'offer', sdp: h.sdp('offer') };
    assert.deepEqual(await h.ack(sp, 'signal', { to: sd.id, type: 'offer', payload: offer }), { ok: true });
    assert.deepEqual((await h.nextEvent(sd, 'signal')).payload, offer);
    const sent = await h.ack(sd, 'chat-message', { text: 'still alive' });
    assert.equal(sent.ok, true);
    assert.deepEqual(await h.nextEvent(sp, 'chat-message'), sent.message);
    const own = await h.appointment(srv, attacker, doctor);
    assert.equal((await h.ack(bad, 'join-room', { appointmentId: own.id })).ok, true);
    assert.equal((await h.ack(bad, 'chat-message', { text: 'sorry about that' })).ok, true);
    assert.equal((await h.api(srv, 'GET', '/livez')).status, 200);
  });
});
