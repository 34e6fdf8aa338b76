// The drain (issue 13) over the official socket.io-client: on the first SIGTERM /readyz turns 503,
// every client gets `server-draining {retryAfterSecs}`, new consult rooms and calls are refused
// (`unavailable`) while those in progress go on; the process exits by itself once they end, or
// ends them as `server-restart` when `server.drain_timeout_secs` passes; a second SIGTERM exits
// at once.

import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';

import * as h from './harness.mjs';

const T = { timeout: 30000 };

afterEach(h.cleanup);

/** A patient, a doctor and a confirmed appointment between them. */
async function consult(server) {
  const patient = await h.user(server, 'patient');
  const doctor = await h.user(server, 'doctor');
  const appt = await h.appointment(server, patient, doctor);
  return { patient, doctor, appt };
}

/** Connects `u` and joins `appt`; returns the socket after its ack and existing-peers. */
async function joined(server, u, appt) {
  const socket = await h.connect(server, u.token);
  const res = await h.ack(socket, 'join-room', { appointmentId: appt.id });
  assert.equal(res.ok, true, `join-room for ${u.id}: ${JSON.stringify(res)}`);
  await h.nextEvent(socket, 'existing-peers');
  return socket;
}

/** `caller` calls `callee` (whose socket `answering` answers); returns the callId. */
async function activeCall(caller, callee, answering) {
  const offer = { type: 'offer', sdp: h.sdp('offer') };
  const placed = await h.ack(caller, 'call-user', { to: callee.id, callType: 'video', offer });
  assert.equal(placed.ok, true, `call-user: ${JSON.stringify(placed)}`);
  assert.equal((await h.nextEvent(answering, 'incoming-call')).callId, placed.callId);
  const answer = { type: 'answer', sdp: h.sdp('answer') };
  assert.deepEqual(await h.ack(answering, 'answer-call', { callId: placed.callId, answer }), { ok: true });
  await h.nextEvent(caller, 'call-answered');
  return placed.callId;
}

/** The `server-draining` a socket got; checks its shape. */
async function drainingNotice(socket, maxSecs) {
  const notice = await h.nextEvent(socket, 'server-draining', 5000);
  assert.deepEqual(Object.keys(notice), ['retryAfterSecs'], JSON.stringify(notice));
  assert.ok(Number.isInteger(notice.retryAfterSecs), JSON.stringify(notice));
  assert.ok(notice.retryAfterSecs >= 1 && notice.retryAfterSecs <= maxSecs, JSON.stringify(notice));
  return notice.retryAfterSecs;
}

function assertUnavailable(res) {
  assert.equal(res.ok, false, `expected unavailable, got ${JSON.stringify(res)}`);
  assert.equal(res.error?.code, 'unavailable', JSON.stringify(res));
  assert.match(res.error.message, /restarting/);
}

async function callRecord(server, u, callId) {
  const res = await h.api(server, 'GET', '/api/calls', { token: u.token });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  const call = res.body.calls.find((c) => c.callId === callId);
  assert.ok(call, `call ${callId} is in ${u.id}'s history`);
  return call;
}

describe('drain', () => {
  test('rooms and calls in progress go on, new ones are refused; the process exits once they end', T, async () => {
    const srv = await h.startServer({ env: { CALLRELAY_SERVER__DRAIN_TIMEOUT_SECS: '300' } });
    const { patient, doctor, appt } = await consult(srv);
    const sd = await joined(srv, doctor, appt);
    const sp = await joined(srv, patient, appt);
    await h.nextEvent(sd, 'peer-joined');
    const callId = await activeCall(sd, patient, sp);
    assert.equal((await h.api(srv, 'GET', '/readyz')).status, 200);

    srv.kill('SIGTERM');
    const retryAfter = await drainingNotice(sd, 300);
    assert.ok(retryAfter > 250, `about the drain timeout: ${retryAfter}`);
    await drainingNotice(sp, 300);
    await h.noEvent(sd, 'server-draining', 300); // once
    assert.equal((await h.api(srv, 'GET', '/readyz')).status, 503);
    assert.match((await h.api(srv, 'GET', '/metrics')).body, /^callrelay_draining 1$/m);

    // Someone new: told at once, and nothing new starts.
    const other = await consult(srv);
    const newcomer = await h.connect(srv, other.doctor.token);
    assert.ok((await drainingNotice(newcomer, 300)) <= retryAfter);
    assertUnavailable(await h.ack(newcomer, 'join-room', { appointmentId: other.appt.id }));
    const offer = { type: 'offer', sdp: h.sdp('offer') };
    assertUnavailable(await h.ack(newcomer, 'call-user', { to: other.patient.id, callType: 'audio', offer }));
    assertUnavailable(await h.ack(sd, 'call-user', { to: other.patient.id, callType: 'audio', offer }));
    await h.noEvent(newcomer, 'existing-peers', 100);

    // The consultation in progress goes on: another device of a member still joins it, chat is
    // stored and delivered, and the call relays.
    const sp2 = await h.connect(srv, patient.token);
    await drainingNotice(sp2, 300);
    const rejoin = await h.ack(sp2, 'join-room', { appointmentId: appt.id });
    assert.equal(rejoin.ok, true, JSON.stringify(rejoin));
    assert.deepEqual(await h.ack(sp2, 'leave-room', {}), { ok: true });
    const sent = await h.ack(sd, 'chat-message', { text: 'still here during the drain' });
    assert.equal(sent.ok, true, JSON.stringify(sent));
    assert.equal((await h.nextEvent(sp, 'chat-message')).id, sent.message.id);
    const transcript = await h.api(srv, 'GET', `/api/appointments/${appt.id}/messages`, { token: patient.token });
    assert.deepEqual(transcript.body.messages.map((m) => m.text), ['still here during the drain']);
    assert.deepEqual(await h.ack(sd, 'ice-candidate', { callId, candidate: h.candidate(1) }), { ok: true });
    assert.equal((await h.nextEvent(sp, 'ice-candidate')).callId, callId);
    assert.equal((await callRecord(srv, doctor, callId)).status, 'active');
    assert.equal(srv.child.exitCode, null, 'still running');

    // They finish: the call, then the room. Then the server goes by itself.
    assert.deepEqual(await h.ack(sd, 'end-call', { callId }), { ok: true });
    assert.deepEqual(await h.nextEvent(sp, 'call-ended'), { callId, reason: 'hangup' });
    assert.equal((await callRecord(srv, patient, callId)).endReason, 'hangup');
    assert.equal(srv.child.exitCode, null, 'the room is still in progress');
    assert.deepEqual(await h.ack(sd, 'leave-room', {}), { ok: true });
    assert.deepEqual(await h.ack(sp, 'leave-room', {}), { ok: true });
    const exit = await srv.stop('SIGTERM', 10000);
    assert.deepEqual(exit, { code: 0, signal: null }, `exits 0 once drained\n${srv.log}`);
  });

  test('a call still live when the drain timeout passes ends as server-restart, and is stored so', T, async () => {
    const db = h.tempSqlite();
    let b;
    try {
      const a = await h.startServer({ dbUrl: db.url, env: { CALLRELAY_SERVER__DRAIN_TIMEOUT_SECS: '2' } });
      const { patient, doctor } = await consult(a);
      const sd = await h.connect(a, doctor.token);
      const sp = await h.connect(a, patient.token);
      const callId = await activeCall(sd, patient, sp);

      a.kill('SIGTERM');
      await drainingNotice(sd, 2);
      await drainingNotice(sp, 2);
      // Not ended at the signal: the call still relays.
      assert.deepEqual(await h.ack(sp, 'ice-candidate', { callId, candidate: h.candidate(2) }), { ok: true });
      assert.equal((await h.nextEvent(sd, 'ice-candidate')).callId, callId);
      for (const s of [sd, sp]) {
        assert.deepEqual(await h.nextEvent(s, 'call-ended', 8000), { callId, reason: 'server-restart' });
      }
      assert.deepEqual(await a.stop('SIGTERM', 10000), { code: 0, signal: null }, a.log);
      h.closeSockets();

      b = await h.startServer({ dbUrl: db.url });
      const call = await callRecord(b, doctor, callId);
      assert.equal(call.status, 'ended');
      assert.equal(call.endReason, 'server-restart');
      assert.ok(call.answeredAt && call.endedAt, JSON.stringify(call));
    } finally {
      if (b) await b.stop();
      db.dispose();
    }
  });

  test('a second SIGTERM exits at once while a room is still in progress', T, async () => {
    const srv = await h.startServer({ env: { CALLRELAY_SERVER__DRAIN_TIMEOUT_SECS: '300' } });
    const { patient, doctor, appt } = await consult(srv);
    const sd = await joined(srv, doctor, appt);
    const sp = await joined(srv, patient, appt);
    srv.kill('SIGTERM');
    await drainingNotice(sd, 300);
    await drainingNotice(sp, 300);
    assert.equal(srv.child.exitCode, null, 'draining, not gone');
    srv.child.kill('SIGTERM');
    const exit = await srv.stop('SIGTERM', 5000);
    assert.notEqual(exit.code, 0, `a forced exit is not a clean one: ${JSON.stringify(exit)}`);
    assert.match(srv.log, /second stop signal/);
  });
});
