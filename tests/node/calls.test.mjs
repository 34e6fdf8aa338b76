// Direct 1:1 calls over the official socket.io-client: ringing every device, first answer wins,
// reject, hang-up, no-answer, busy, offline, permissions, disconnects, the stored call history
// (SQLite, and PostgreSQL when CALLRELAY_NODE_PG_URL is set) and calls cut by a server restart.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import * as h from './harness.mjs';

const T = { timeout: 20000 };
const RING = { CALLRELAY_CALLS__RING_TIMEOUT_SECS: '2' };
const TS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;

let srv;

before(async () => {
  srv = await h.startServer({ env: RING });
});
after(h.cleanup);
afterEach(h.closeSockets);

/** A patient, a doctor and an appointment between them (confirmed unless told). */
async function pair(server = srv, { confirm = true } = {}) {
  const patient = await h.user(server, 'patient');
  const doctor = await h.user(server, 'doctor');
  const appt = await h.appointment(server, patient, doctor, { confirm });
  return { patient, doctor, appt };
}

const offer = () => ({ type: 'offer', sdp: h.sdp('offer') });
const answer = () => ({ type: 'answer', sdp: h.sdp('answer') });
const identity = (u) => ({ userId: u.id, name: u.name, role: u.role });

function assertError(res, code) {
  assert.equal(res.ok, false, `expected error ${code}, got ${JSON.stringify(res)}`);
  assert.equal(res.error?.code, code, `expected ${code}, got ${JSON.stringify(res)}`);
  assert.equal(typeof res.error.message, 'string');
}

/** call-user that must succeed; returns the callId. */
async function place(socket, to, callType = 'video', extra = {}) {
  const res = await h.ack(socket, 'call-user', { to: to.id, callType, offer: offer(), ...extra });
  assert.equal(res.ok, true, `call-user: ${JSON.stringify(res)}`);
  assert.equal(typeof res.callId, 'string');
  assert.ok(res.callId.length > 0);
  return res.callId;
}

async function history(server, u) {
  const res = await h.api(server, 'GET', '/api/calls', { token: u.token });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  assert.ok(Array.isArray(res.body.calls));
  return res.body.calls;
}

function findCall(calls, callId) {
  const c = calls.find((x) => x.callId === callId);
  assert.ok(c, `call ${callId} is in the history`);
  return c;
}

/** Checks a stored Call's fields, the parties' display names (callerName, calleeName) too. */
function assertCall(c, { callId, caller, callee, callType, status, endReason, answered }) {
  assert.deepEqual(
    {
      callId: c.callId, callerId: c.callerId, callerName: c.callerName, calleeId: c.calleeId,
      calleeName: c.calleeName, callType: c.callType, status: c.status, endReason: c.endReason,
      media: c.media,
    },
    {
      callId, callerId: caller.id, callerName: caller.name, calleeId: callee.id,
      calleeName: callee.name, callType, status, endReason, media: 'p2p',
    },
  );
  assert.match(c.startedAt, TS);
  assert.match(c.endedAt, TS);
  assert.ok(Date.parse(c.endedAt) >= Date.parse(c.startedAt), 'endedAt >= startedAt');
  if (answered) {
    assert.match(c.answeredAt, TS);
    assert.ok(Date.parse(c.answeredAt) >= Date.parse(c.startedAt));
    assert.ok(Date.parse(c.endedAt) >= Date.parse(c.answeredAt));
  } else {
    assert.equal(c.answeredAt ?? null, null, 'never answered: no answeredAt');
  }
}

describe('direct calls', () => {
  test('join confirms only the token\'s own user id', T, async () => {
    const u = await h.user(srv, 'patient');
    const other = await h.user(srv, 'doctor');
    const s = await h.connect(srv, u.token);
    assert.deepEqual(await h.ack(s, 'join', { userId: u.id }), { ok: true });
    assertError(await h.ack(s, 'join', { userId: other.id }), 'forbidden');
  });

  test('rings every device of the callee; first answer wins; candidates both ways; hang-up', T, async () => {
    const { patient, doctor, appt } = await pair();
    const sd = await h.connect(srv, doctor.token);
    const p1 = await h.connect(srv, patient.token);
    const p2 = await h.connect(srv, patient.token);
    const o = offer();
    const placed = await h.ack(sd, 'call-user', { to: patient.id, callType: 'video', offer: o, appointmentId: appt.id });
    assert.equal(placed.ok, true, JSON.stringify(placed));
    const { callId } = placed;
    assert.equal(typeof callId, 'string');
    const ring = { callId, from: identity(doctor), callType: 'video', offer: o, appointmentId: appt.id };
    assert.deepEqual(await h.nextEvent(p1, 'incoming-call'), ring);
    assert.deepEqual(await h.nextEvent(p2, 'incoming-call'), ring);
    await h.noEvent(sd, 'incoming-call', 0);

    // While it rings, the caller's candidates reach every ringing device.
    const c1 = h.candidate(1);
    assert.deepEqual(await h.ack(sd, 'ice-candidate', { callId, candidate: c1 }), { ok: true });
    assert.deepEqual(await h.nextEvent(p1, 'ice-candidate'), { callId, candidate: c1 });
    assert.deepEqual(await h.nextEvent(p2, 'ice-candidate'), { callId, candidate: c1 });

    // Device 2 answers first.
    const a = answer();
    assert.deepEqual(await h.ack(p2, 'answer-call', { callId, answer: a }), { ok: true });
    assert.deepEqual(await h.nextEvent(sd, 'call-answered'), { callId, answer: a });
    assert.deepEqual(await h.nextEvent(p1, 'call-answered-elsewhere'), { callId });
    await h.noEvent(p2, 'call-answered-elsewhere', 200);
    // A late answer from device 1 is a conflict and changes nothing.
    assertError(await h.ack(p1, 'answer-call', { callId, answer: answer() }), 'conflict');
    await h.noEvent(sd, 'call-answered', 200);

    // Candidates both ways between the caller and the answering device, end-of-candidates too.
    const c2 = h.candidate(2);
    assert.deepEqual(await h.ack(p2, 'ice-candidate', { callId, candidate: c2 }), { ok: true });
    assert.deepEqual(await h.nextEvent(sd, 'ice-candidate'), { callId, candidate: c2 });
    const c3 = h.candidate(3);
    assert.deepEqual(await h.ack(sd, 'ice-candidate', { callId, candidate: c3 }), { ok: true });
    assert.deepEqual(await h.nextEvent(p2, 'ice-candidate'), { callId, candidate: c3 });
    assert.deepEqual(await h.ack(sd, 'ice-candidate', { callId, candidate: null }), { ok: true });
    assert.deepEqual(await h.nextEvent(p2, 'ice-candidate'), { callId, candidate: null });

    // The patient hangs up.
    assert.deepEqual(await h.ack(p2, 'end-call', { callId }), { ok: true });
    assert.deepEqual(await h.nextEvent(sd, 'call-ended'), { callId, reason: 'hangup' });
    // Over: it can be neither answered nor ended again.
    assert.equal((await h.ack(p1, 'answer-call', { callId, answer: answer() })).ok, false);
    assert.equal((await h.ack(sd, 'end-call', { callId })).ok, false);

    for (const u of [doctor, patient]) {
      assertCall(findCall(await history(srv, u), callId), {
        callId, caller: doctor, callee: patient, callType: 'video', status: 'ended', endReason: 'hangup', answered: true,
      });
    }
  });

  test('the callee rejects, with a reason and without one', T, async () => {
    const { patient, doctor } = await pair();
    const sp = await h.connect(srv, patient.token);
    const sd = await h.connect(srv, doctor.token);

    const plainOffer = h.sdp('offer'); // an SDP string rather than {type, sdp}
    const first = await h.ack(sp, 'call-user', { to: doctor.id, callType: 'audio', offer: plainOffer });
    assert.equal(first.ok, true);
    const ring = await h.nextEvent(sd, 'incoming-call');
    assert.equal(ring.callId, first.callId);
    assert.deepEqual(ring.from, identity(patient));
    assert.equal(ring.callType, 'audio');
    assert.equal(ring.offer, plainOffer);
    assert.ok(ring.appointmentId == null, 'no appointmentId was given');
    assert.deepEqual(await h.ack(sd, 'reject-call', { callId: first.callId, reason: 'in-surgery' }), { ok: true });
    assert.deepEqual(await h.nextEvent(sp, 'call-rejected'), { callId: first.callId, reason: 'in-surgery' });

    const second = await place(sp, doctor, 'audio');
    await h.nextEvent(sd, 'incoming-call');
    assert.deepEqual(await h.ack(sd, 'reject-call', { callId: second }), { ok: true });
    assert.deepEqual(await h.nextEvent(sp, 'call-rejected'), { callId: second, reason: 'rejected' });
    // A rejected call cannot be answered any more.
    assert.equal((await h.ack(sd, 'answer-call', { callId: second, answer: answer() })).ok, false);
    await h.noEvent(sp, 'call-answered', 200);

    const calls = await history(srv, patient);
    for (const callId of [first.callId, second]) {
      assertCall(findCall(calls, callId), {
        callId, caller: patient, callee: doctor, callType: 'audio', status: 'rejected', endReason: 'rejected', answered: false,
      });
    }
  });

  test('the caller hangs up while it rings: every device stops ringing, stored as missed', T, async () => {
    const { patient, doctor } = await pair();
    const sd = await h.connect(srv, doctor.token);
    const p1 = await h.connect(srv, patient.token);
    const p2 = await h.connect(srv, patient.token);
    const callId = await place(sd, patient);
    await h.nextEvent(p1, 'incoming-call');
    await h.nextEvent(p2, 'incoming-call');
    assert.deepEqual(await h.ack(sd, 'end-call', { callId }), { ok: true });
    assert.deepEqual(await h.nextEvent(p1, 'call-ended'), { callId, reason: 'hangup' });
    assert.deepEqual(await h.nextEvent(p2, 'call-ended'), { callId, reason: 'hangup' });
    assert.equal((await h.ack(p1, 'answer-call', { callId, answer: answer() })).ok, false);
    await h.noEvent(sd, 'call-answered', 200);
    assertCall(findCall(await history(srv, doctor), callId), {
      callId, caller: doctor, callee: patient, callType: 'video', status: 'missed', endReason: 'hangup', answered: false,
    });
  });

  test('no answer within the ring timeout (2 s): both sides get call-ended no-answer', T, async () => {
    const { patient, doctor } = await pair();
    const sd = await h.connect(srv, doctor.token);
    const sp = await h.connect(srv, patient.token);
    const t0 = Date.now();
    const callId = await place(sd, patient, 'audio');
    await h.nextEvent(sp, 'incoming-call');
    assert.deepEqual(await h.nextEvent(sd, 'call-ended', 5000), { callId, reason: 'no-answer' });
    const elapsed = Date.now() - t0;
    assert.ok(elapsed >= 1500 && elapsed < 4500, `rang for ${elapsed} ms, the timeout is 2 s`);
    assert.deepEqual(await h.nextEvent(sp, 'call-ended', 1000), { callId, reason: 'no-answer' });
    // Too late to answer.
    assert.equal((await h.ack(sp, 'answer-call', { callId, answer: answer() })).ok, false);
    const c = findCall(await history(srv, patient), callId);
    assertCall(c, { callId, caller: doctor, callee: patient, callType: 'audio', status: 'missed', endReason: 'no-answer', answered: false });
    const rang = Date.parse(c.endedAt) - Date.parse(c.startedAt);
    assert.ok(rang >= 1500 && rang < 4500, `stored ring time ${rang} ms`);
  });

  test('busy: a callee ringing or in a call refuses another caller, and the attempt is stored', T, async () => {
    const { patient, doctor } = await pair();
    const staff = await h.user(srv, 'staff');
    const sd = await h.connect(srv, doctor.token);
    const sp = await h.connect(srv, patient.token);
    const ss = await h.connect(srv, staff.token);

    const callId = await place(sd, patient);
    await h.nextEvent(sp, 'incoming-call');
    // Ringing counts as in a call.
    const whileRinging = await h.ack(ss, 'call-user', { to: patient.id, callType: 'audio', offer: offer() });
    assertError(whileRinging, 'busy');
    await h.noEvent(sp, 'incoming-call', 300);

    assert.deepEqual(await h.ack(sp, 'answer-call', { callId, answer: answer() }), { ok: true });
    await h.nextEvent(sd, 'call-answered');
    // Active: both parties are busy.
    assertError(await h.ack(ss, 'call-user', { to: patient.id, callType: 'video', offer: offer() }), 'busy');
    assertError(await h.ack(ss, 'call-user', { to: doctor.id, callType: 'video', offer: offer() }), 'busy');
    await h.noEvent(sp, 'incoming-call', 200);
    await h.noEvent(sd, 'incoming-call', 0);
    // The busy attempts did not disturb the call.
    const cand = h.candidate(9);
    assert.deepEqual(await h.ack(sp, 'ice-candidate', { callId, candidate: cand }), { ok: true });
    assert.deepEqual(await h.nextEvent(sd, 'ice-candidate'), { callId, candidate: cand });

    const staffCalls = await history(srv, staff);
    assert.equal(staffCalls.length, 3);
    for (const c of staffCalls) {
      assert.equal(c.status, 'busy');
      assert.equal(c.callerId, staff.id);
      assert.notEqual(c.callId, callId);
    }
    // (The last two attempts may share a millisecond, so compare them as a set.)
    assert.deepEqual(staffCalls.map((c) => c.calleeId).sort(), [doctor.id, patient.id, patient.id].sort());
    assert.equal(staffCalls[2].calleeId, patient.id, 'the attempt while ringing is the oldest');

    // Once the call is over the patient can be called again.
    assert.deepEqual(await h.ack(sd, 'end-call', { callId }), { ok: true });
    await h.nextEvent(sp, 'call-ended');
    const next = await place(ss, patient, 'audio');
    const ring = await h.nextEvent(sp, 'incoming-call');
    assert.equal(ring.callId, next);
    assert.deepEqual(ring.from, identity(staff));
    assert.deepEqual(await h.ack(ss, 'end-call', { callId: next }), { ok: true });
    assert.deepEqual(await h.nextEvent(sp, 'call-ended'), { callId: next, reason: 'hangup' });
  });

  test('offline: a user with no socket cannot be called', T, async () => {
    const staff = await h.user(srv, 'staff');
    const ss = await h.connect(srv, staff.token);
    const never = await h.user(srv, 'patient');
    assertError(await h.ack(ss, 'call-user', { to: never.id, callType: 'video', offer: offer() }), 'offline');

    const gone = await h.user(srv, 'doctor');
    const g1 = await h.connect(srv, gone.token);
    const g2 = await h.connect(srv, gone.token);
    h.closeSocket(g1);
    h.closeSocket(g2);
    await h.sleep(200);
    assertError(await h.ack(ss, 'call-user', { to: gone.id, callType: 'audio', offer: offer() }), 'offline');
  });

  test('who may call whom: care relations, staff and admins; others are forbidden', T, async () => {
    const { patient, doctor } = await pair();
    const otherDoctor = await h.user(srv, 'doctor');
    const otherPatient = await h.user(srv, 'patient');
    const staff = await h.user(srv, 'staff');
    const admin = await h.user(srv, 'admin');
    const pending = await pair(srv, { confirm: false });
    const cancelled = await pair();
    const cancel = await h.api(srv, 'POST', `/api/appointments/${cancelled.appt.id}/cancel`, { token: cancelled.doctor.token });
    assert.equal(cancel.status, 200);

    const sock = {};
    for (const u of [patient, doctor, otherDoctor, otherPatient, staff, admin,
      pending.patient, pending.doctor, cancelled.patient, cancelled.doctor]) {
      sock[u.id] = await h.connect(srv, u.token);
    }
    const refuse = async (from, to) => {
      const res = await h.ack(sock[from.id], 'call-user', { to: to.id, callType: 'video', offer: offer() });
      assertError(res, 'forbidden');
    };
    // Callees are online, so "forbidden" is not "offline" in disguise.
    await refuse(patient, otherDoctor);
    await refuse(patient, otherPatient);
    await refuse(otherDoctor, patient);
    await refuse(doctor, otherPatient);
    await refuse(otherDoctor, doctor);
    await refuse(cancelled.patient, cancelled.doctor);
    await refuse(cancelled.doctor, cancelled.patient);
    for (const u of [otherDoctor, otherPatient, patient, doctor, cancelled.doctor, cancelled.patient]) {
      await h.noEvent(sock[u.id], 'incoming-call', u === otherDoctor ? 300 : 0);
    }

    const allowed = async (from, to) => {
      const callId = await place(sock[from.id], to);
      const ring = await h.nextEvent(sock[to.id], 'incoming-call');
      assert.equal(ring.callId, callId);
      assert.deepEqual(ring.from, identity(from));
      assert.deepEqual(await h.ack(sock[from.id], 'end-call', { callId }), { ok: true });
      assert.deepEqual(await h.nextEvent(sock[to.id], 'call-ended'), { callId, reason: 'hangup' });
    };
    await allowed(patient, doctor);
    await allowed(doctor, patient);
    // A pending (not cancelled) appointment is a care relation too.
    await allowed(pending.patient, pending.doctor);
    await allowed(pending.doctor, pending.patient);
    await allowed(staff, otherPatient);
    await allowed(admin, otherDoctor);
    await allowed(staff, cancelled.patient);
  });

  test('strangers cannot act on a call; unknown calls are not found', T, async () => {
    const { patient, doctor } = await pair();
    const stranger = await h.user(srv, 'patient');
    const sd = await h.connect(srv, doctor.token);
    const sp = await h.connect(srv, patient.token);
    const sx = await h.connect(srv, stranger.token);
    const callId = await place(sd, patient);
    await h.nextEvent(sp, 'incoming-call');

    assertError(await h.ack(sx, 'answer-call', { callId, answer: answer() }), 'forbidden');
    assertError(await h.ack(sx, 'reject-call', { callId }), 'forbidden');
    assertError(await h.ack(sx, 'end-call', { callId }), 'forbidden');
    assertError(await h.ack(sx, 'ice-candidate', { callId, candidate: h.candidate(1) }), 'forbidden');
    // The caller cannot answer its own call.
    assertError(await h.ack(sd, 'answer-call', { callId, answer: answer() }), 'forbidden');
    await h.noEvent(sd, 'call-answered', 200);
    await h.noEvent(sd, 'call-rejected', 0);
    await h.noEvent(sd, 'ice-candidate', 0);
    await h.noEvent(sp, 'call-ended', 0);
    await h.noEvent(sp, 'ice-candidate', 0);

    // Still ringing and answerable by its callee.
    assert.deepEqual(await h.ack(sp, 'answer-call', { callId, answer: answer() }), { ok: true });
    await h.nextEvent(sd, 'call-answered');
    assertError(await h.ack(sx, 'end-call', { callId }), 'forbidden');
    await h.noEvent(sd, 'call-ended', 200);
    assert.deepEqual(await h.ack(sd, 'end-call', { callId }), { ok: true });
    assert.deepEqual(await h.nextEvent(sp, 'call-ended'), { callId, reason: 'hangup' });

    const unknown = h.uid('call');
    assertError(await h.ack(sp, 'answer-call', { callId: unknown, answer: answer() }), 'not_found');
    assertError(await h.ack(sp, 'reject-call', { callId: unknown }), 'not_found');
    assertError(await h.ack(sp, 'end-call', { callId: unknown }), 'not_found');
    assertError(await h.ack(sp, 'ice-candidate', { callId: unknown, candidate: null }), 'not_found');
  });

  test('malformed and oversized call events are refused and change nothing', T, async () => {
    const { patient, doctor } = await pair();
    const sd = await h.connect(srv, doctor.token);
    const sp = await h.connect(srv, patient.token);
    const to = patient.id;
    const bad = [
      { to, callType: 'fax', offer: offer() },
      { to, callType: 'video', offer: 'not an sdp' },
      { to, callType: 'video', offer: { type: 'offer' } },
      { to, callType: 'video' },
      { callType: 'video', offer: offer() },
      { to: 7, callType: 'video', offer: offer() },
      { to, callType: 'video', offer: offer(), appointmentId: 12 },
      'call me',
    ];
    for (const payload of bad) assertError(await h.ack(sd, 'call-user', payload), 'invalid_payload');
    const big = { type: 'offer', sdp: h.sdp('offer', `a=x-pad:${'a'.repeat(70000)}`) };
    assertError(await h.ack(sd, 'call-user', { to, callType: 'video', offer: big }), 'too_large');
    await h.noEvent(sp, 'incoming-call', 300);

    const callId = await place(sd, patient);
    await h.nextEvent(sp, 'incoming-call');
    assertError(await h.ack(sp, 'answer-call', { callId, answer: 'nope' }), 'invalid_payload');
    assertError(await h.ack(sp, 'answer-call', { callId }), 'invalid_payload');
    assertError(await h.ack(sp, 'answer-call', { callId, answer: { type: 'answer', sdp: big.sdp } }), 'too_large');
    assertError(await h.ack(sp, 'reject-call', { callId, reason: 5 }), 'invalid_payload');
    assertError(await h.ack(sp, 'ice-candidate', { callId, candidate: 'candidate:1 1 udp 1 1.2.3.4 9 typ host' }), 'invalid_payload');
    assertError(await h.ack(sp, 'ice-candidate', { callId, candidate: { candidate: 'x'.repeat(3000) } }), 'too_large');
    assertError(await h.ack(sp, 'end-call', { callId: 42 }), 'invalid_payload');
    await h.noEvent(sd, 'call-answered', 200);
    await h.noEvent(sd, 'call-rejected', 0);
    await h.noEvent(sd, 'ice-candidate', 0);
    await h.noEvent(sd, 'call-ended', 0);
    // The call is still ringing and can be answered properly.
    const a = answer();
    assert.deepEqual(await h.ack(sp, 'answer-call', { callId, answer: a }), { ok: true });
    assert.deepEqual(await h.nextEvent(sd, 'call-answered'), { callId, answer: a });
    assert.deepEqual(await h.ack(sp, 'end-call', { callId }), { ok: true });
    await h.nextEvent(sd, 'call-ended');
  });

  test('disconnects: another device leaving changes nothing; a party\'s last socket ends the call', T, async () => {
    const { patient, doctor } = await pair();
    const sd = await h.connect(srv, doctor.token);
    const p1 = await h.connect(srv, patient.token);
    const p2 = await h.connect(srv, patient.token);

    // Ringing on two devices; one of them goes away: still ringing on the other.
    const callId = await place(sd, patient);
    await h.nextEvent(p1, 'incoming-call');
    await h.nextEvent(p2, 'incoming-call');
    h.closeSocket(p1);
    await h.noEvent(sd, 'call-ended', 400);
    const a = answer();
    assert.deepEqual(await h.ack(p2, 'answer-call', { callId, answer: a }), { ok: true });
    assert.deepEqual(await h.nextEvent(sd, 'call-answered'), { callId, answer: a });
    // The patient's last socket goes: the doctor is told.
    h.closeSocket(p2);
    assert.deepEqual(await h.nextEvent(sd, 'call-ended'), { callId, reason: 'disconnected' });
    assertCall(findCall(await history(srv, doctor), callId), {
      callId, caller: doctor, callee: patient, callType: 'video', status: 'ended', endReason: 'disconnected', answered: true,
    });

    // The caller vanishing while it rings stops the ringing everywhere.
    const p3 = await h.connect(srv, patient.token);
    const p4 = await h.connect(srv, patient.token);
    const sd2 = await h.connect(srv, doctor.token);
    const second = await place(sd2, patient, 'audio');
    await h.nextEvent(p3, 'incoming-call');
    await h.nextEvent(p4, 'incoming-call');
    h.closeSocket(sd2);
    h.closeSocket(sd);
    assert.deepEqual(await h.nextEvent(p3, 'call-ended'), { callId: second, reason: 'disconnected' });
    assert.deepEqual(await h.nextEvent(p4, 'call-ended'), { callId: second, reason: 'disconnected' });
    assertCall(findCall(await history(srv, patient), second), {
      callId: second, caller: doctor, callee: patient, callType: 'audio', status: 'missed', endReason: 'disconnected', answered: false,
    });
  });
});

/**
 * Four calls between one patient and doctor, each ended a different way, then the history of
 * both, newest first, and of a stranger (empty).
 */
async function historyScenario(server) {
  const { patient, doctor } = await pair(server);
  const stranger = await h.user(server, 'patient');
  const sd = await h.connect(server, doctor.token);
  const sp = await h.connect(server, patient.token);

  // 1. Answered, then hung up by the doctor.
  const c1 = await place(sd, patient, 'video');
  await h.nextEvent(sp, 'incoming-call');
  assert.deepEqual(await h.ack(sp, 'answer-call', { callId: c1, answer: answer() }), { ok: true });
  await h.nextEvent(sd, 'call-answered');
  await h.sleep(20);
  assert.deepEqual(await h.ack(sd, 'end-call', { callId: c1 }), { ok: true });
  assert.deepEqual(await h.nextEvent(sp, 'call-ended'), { callId: c1, reason: 'hangup' });
  await h.sleep(5);
  // 2. Rejected by the doctor.
  const c2 = await place(sp, doctor, 'audio');
  await h.nextEvent(sd, 'incoming-call');
  assert.deepEqual(await h.ack(sd, 'reject-call', { callId: c2 }), { ok: true });
  await h.nextEvent(sp, 'call-rejected');
  await h.sleep(5);
  // 3. Nobody answers.
  const c3 = await place(sd, patient, 'audio');
  await h.nextEvent(sp, 'incoming-call');
  assert.deepEqual(await h.nextEvent(sd, 'call-ended', 5000), { callId: c3, reason: 'no-answer' });
  await h.nextEvent(sp, 'call-ended');
  await h.sleep(5);
  // 4. The caller gives up while it rings.
  const c4 = await place(sp, doctor, 'video');
  await h.nextEvent(sd, 'incoming-call');
  assert.deepEqual(await h.ack(sp, 'end-call', { callId: c4 }), { ok: true });
  assert.deepEqual(await h.nextEvent(sd, 'call-ended'), { callId: c4, reason: 'hangup' });

  for (const u of [doctor, patient]) {
    const calls = await history(server, u);
    assert.deepEqual(calls.map((c) => c.callId), [c4, c3, c2, c1], `newest first for ${u.role}`);
    const started = calls.map((c) => Date.parse(c.startedAt));
    for (let i = 1; i < started.length; i++) assert.ok(started[i - 1] > started[i], 'startedAt descending');
    assertCall(calls[3], { callId: c1, caller: doctor, callee: patient, callType: 'video', status: 'ended', endReason: 'hangup', answered: true });
    assertCall(calls[2], { callId: c2, caller: patient, callee: doctor, callType: 'audio', status: 'rejected', endReason: 'rejected', answered: false });
    assertCall(calls[1], { callId: c3, caller: doctor, callee: patient, callType: 'audio', status: 'missed', endReason: 'no-answer', answered: false });
    assertCall(calls[0], { callId: c4, caller: patient, callee: doctor, callType: 'video', status: 'missed', endReason: 'hangup', answered: false });
  }
  assert.deepEqual(await history(server, stranger), []);
  assert.equal((await h.api(server, 'GET', '/api/calls')).status, 401);
}

describe('call history', () => {
  test('newest first with each outcome stored (SQLite)', T, async () => {
    await historyScenario(srv);
  });

  test('newest first with each outcome stored (PostgreSQL)', T, async (t) => {
    if (!h.PG_URL) {
      console.log('\n*** SKIPPED postgres: CALLRELAY_NODE_PG_URL is not set, the call history was checked on SQLite only ***\n');
      t.skip('CALLRELAY_NODE_PG_URL is not set');
      return;
    }
    const pg = await h.startServer({ dbUrl: h.PG_URL, env: RING });
    try {
      await historyScenario(pg);
    } finally {
      h.closeSockets();
      await pg.stop();
    }
  });
});

/**
 * Server A: an older finished call, then one active and one ringing call; A is stopped with
 * `signal`; server B on the same database must show both cut calls as server-restart, the old one
 * untouched.
 */
async function restartScenario(signal) {
  const db = h.tempSqlite();
  let b;
  try {
    const a = await h.startServer({ dbUrl: db.url, env: { CALLRELAY_CALLS__RING_TIMEOUT_SECS: '60' } });
    const one = await pair(a);
    const two = await pair(a);
    const sd1 = await h.connect(a, one.doctor.token);
    const sp1 = await h.connect(a, one.patient.token);
    const sd2 = await h.connect(a, two.doctor.token);
    const sp2 = await h.connect(a, two.patient.token);

    const old = await place(sp1, one.doctor, 'audio');
    await h.nextEvent(sd1, 'incoming-call');
    assert.deepEqual(await h.ack(sd1, 'reject-call', { callId: old, reason: 'later' }), { ok: true });
    await h.nextEvent(sp1, 'call-rejected');
    const oldRecord = findCall(await history(a, one.patient), old);

    const active = await place(sd1, one.patient, 'video');
    await h.nextEvent(sp1, 'incoming-call');
    assert.deepEqual(await h.ack(sp1, 'answer-call', { callId: active, answer: answer() }), { ok: true });
    await h.nextEvent(sd1, 'call-answered');
    const ringing = await place(sd2, two.patient, 'audio');
    await h.nextEvent(sp2, 'incoming-call');
    assert.equal(findCall(await history(a, one.doctor), active).status, 'active');
    assert.equal(findCall(await history(a, two.doctor), ringing).status, 'ringing');

    const exit = await a.stop(signal);
    if (signal === 'SIGTERM') {
      assert.deepEqual(exit, { code: 0, signal: null }, `SIGTERM drains and exits 0\n${a.log}`);
      // Draining ends the live calls for everyone on them.
      for (const [s, callId] of [[sd1, active], [sp1, active], [sd2, ringing], [sp2, ringing]]) {
        assert.deepEqual(await h.nextEvent(s, 'call-ended', 2000), { callId, reason: 'server-restart' });
      }
    } else {
      assert.equal(exit.signal, 'SIGKILL');
    }
    h.closeSockets();

    b = await h.startServer({ dbUrl: db.url, env: RING });
    const calls1 = await history(b, one.doctor);
    assert.deepEqual(calls1.map((c) => c.callId), [active, old]);
    assertCall(calls1[0], {
      callId: active, caller: one.doctor, callee: one.patient, callType: 'video', status: 'ended', endReason: 'server-restart', answered: true,
    });
    assert.deepEqual(calls1[1], oldRecord, 'older history is intact');
    const calls2 = await history(b, two.patient);
    assert.deepEqual(calls2.map((c) => c.callId), [ringing]);
    assertCall(calls2[0], {
      callId: ringing, caller: two.doctor, callee: two.patient, callType: 'audio', status: 'missed', endReason: 'server-restart', answered: false,
    });

    // The new server takes calls between the same people (nobody is left "busy").
    const nd = await h.connect(b, one.doctor.token);
    const np = await h.connect(b, one.patient.token);
    const fresh = await place(nd, one.patient);
    assert.equal((await h.nextEvent(np, 'incoming-call')).callId, fresh);
    assert.deepEqual(await h.ack(nd, 'end-call', { callId: fresh }), { ok: true });
  } finally {
    h.closeSockets();
    if (b) await b.stop();
    db.dispose();
  }
}

describe('restart mid-call', () => {
  test('SIGTERM: live calls end as server-restart, stored; the next server shows them', T, async () => {
    await restartScenario('SIGTERM');
  });

  test('crash (SIGKILL): the next server closes the left-over calls as server-restart', T, async () => {
    await restartScenario('SIGKILL');
  });
});
