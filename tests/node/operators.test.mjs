// What operators and the host application get, against the real binary: the admin API (live rooms
// and calls, removing a participant, closing a room, ending a call; refused to non-admins), the
// audit trail (who joined and left with which media path, transcript reads, admin actions;
// `callrelay audit verify` catching an edited record), and webhooks (signed, in order, retried
// while the receiver refuses, and still delivered after a server restart).

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';

import * as h from './harness.mjs';

const T = { timeout: 60000 };
const HOOK_SECRET = h.HOOK_SECRET;

let srv;

before(async () => {
  srv = await h.startServer();
});
after(h.cleanup);
afterEach(h.closeSockets);

const offer = () => ({ type: 'offer', sdp: h.sdp('offer') });
const answer = () => ({ type: 'answer', sdp: h.sdp('answer') });

async function joined(server, u, appt) {
  const socket = await h.connect(server, u.token);
  const res = await h.ack(socket, 'join-room', { appointmentId: appt.id });
  assert.equal(res.ok, true, `join-room for ${u.id}: ${JSON.stringify(res)}`);
  return socket;
}

function assertApiError(res, status, code) {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.equal(res.body?.error?.code, code, JSON.stringify(res.body));
}

/** `callrelay audit verify` on a database: {status, out}. */
function auditVerify(dbUrl) {
  const env = { ...process.env, CALLRELAY_DATABASE__URL: dbUrl };
  const run = spawnSync(process.env.CALLRELAY_BIN, ['audit', 'verify'], { env, encoding: 'utf8' });
  return { status: run.status, out: `${run.stdout}${run.stderr}` };
}

/** Runs SQL on an SQLite database file the way someone with database access could. */
function sqlite(dbUrl, sql) {
  const file = dbUrl.replace(/^sqlite:\/\//, '').replace(/\?.*$/, '');
  const run = spawnSync('python3', ['-c', `import sqlite3,sys
c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()`, file, sql], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
}

describe('admin API', () => {
  test('only admins: 401 without a token, 403 for every other role', T, async () => {
    assertApiError(await h.api(srv, 'GET', '/api/admin/rooms'), 401, 'unauthorized');
    for (const role of ['patient', 'doctor', 'staff']) {
      const u = await h.user(srv, role);
      for (const [method, route] of [
        ['GET', '/api/admin/rooms'],
        ['GET', '/api/admin/calls'],
        ['GET', '/api/admin/audit'],
        ['POST', '/api/admin/rooms/appt-1/close'],
        ['DELETE', '/api/admin/rooms/appt-1/participants/u-1'],
        ['POST', '/api/admin/calls/c-1/end'],
      ]) {
        assertApiError(await h.api(srv, method, route, { token: u.token }), 403, 'forbidden');
      }
    }
  });

  test('rooms with their members and media path; remove a participant, close the room; all audited', T, async () => {
    const patient = await h.user(srv, 'patient', 'Pat Smith');
    const doctor = await h.user(srv, 'doctor', 'Dr Who');
    const admin = await h.user(srv, 'admin');
    const appt = await h.appointment(srv, patient, doctor);
    const sp = await joined(srv, patient, appt);
    const sd = await joined(srv, doctor, appt);

    const room = async () => {
      const res = await h.api(srv, 'GET', '/api/admin/rooms', { token: admin.token });
      assert.equal(res.status, 200);
      return res.body.rooms.find((r) => r.appointmentId === appt.id);
    };
    let seen = await room();
    assert.deepEqual(seen.participants.map((p) => [p.userId, p.name, p.role, p.socketId]), [
      [patient.id, 'Pat Smith', 'patient', sp.id],
      [doctor.id, 'Dr Who', 'doctor', sd.id],
    ]);
    assert.equal(seen.media, 'p2p');
    assert.equal(seen.relayReason, null);

    assert.deepEqual(await h.ack(sd, 'sfu-join', { roomId: appt.id, reason: 'p2p-failed' }), { ok: true });
    await h.nextEvent(sp, 'relay-activated');
    seen = await room();
    assert.equal(seen.media, 'sfu');
    assert.equal(seen.relayReason, 'p2p-failed');
    assert.ok(Array.isArray(seen.tracks), 'a relayed room lists its tracks (none published here)');

    // The patient is removed: told so; the doctor sees it leave.
    const removed = await h.api(srv, 'DELETE', `/api/admin/rooms/${appt.id}/participants/${patient.id}`, {
      token: admin.token,
    });
    assert.equal(removed.status, 200, JSON.stringify(removed.body));
    assert.deepEqual(removed.body, { removed: 1 });
    assert.deepEqual(await h.nextEvent(sp, 'removed-from-room'), { roomId: appt.id, reason: 'removed' });
    const left = await h.nextEvent(sd, 'peer-left');
    assert.equal(left.socketId, sp.id);
    assert.equal(left.reason, 'removed');
    assert.deepEqual((await room()).participants.map((p) => p.userId), [doctor.id]);
    assertApiError(
      await h.api(srv, 'DELETE', `/api/admin/rooms/${appt.id}/participants/${patient.id}`, { token: admin.token }),
      404, 'not_found');
    // Chat still reaches the room; not the removed socket.
    assert.equal((await h.ack(sd, 'chat-message', { text: 'still here' })).ok, true);
    await h.noEvent(sp, 'chat-message');

    // The room is closed: its last member is told, the room is gone.
    const closed = await h.api(srv, 'POST', `/api/admin/rooms/${appt.id}/close`, { token: admin.token });
    assert.deepEqual([closed.status, closed.body], [200, { removed: 1 }]);
    assert.deepEqual(await h.nextEvent(sd, 'removed-from-room'), { roomId: appt.id, reason: 'room-closed' });
    assert.equal(await room(), undefined);
    assertApiError(await h.api(srv, 'POST', `/api/admin/rooms/${appt.id}/close`, { token: admin.token }), 404, 'not_found');

    // The doctor reads the transcript.
    const transcript = await h.api(srv, 'GET', `/api/appointments/${appt.id}/messages`, { token: doctor.token });
    assert.equal(transcript.status, 200);

    // The appointment's trail, in order: who, what, with which media path.
    const trail = await h.api(srv, 'GET', `/api/admin/audit?appointmentId=${appt.id}`, { token: admin.token });
    assert.equal(trail.status, 200, JSON.stringify(trail.body));
    const rows = trail.body.records.map((r) => [r.actorId, r.action, r.detail.media ?? null, r.detail.reason ?? null]);
    assert.deepEqual(rows, [
      [patient.id, 'room.joined', 'p2p', null],
      [doctor.id, 'room.joined', 'p2p', null],
      ['server', 'room.relayed', null, 'p2p-failed'],
      [patient.id, 'room.left', 'sfu', 'removed'],
      [admin.id, 'admin.participant_removed', null, null],
      [doctor.id, 'room.left', 'sfu', 'removed'],
      [admin.id, 'admin.room_closed', null, null],
      [doctor.id, 'transcript.read', null, null],
    ]);
    for (const r of trail.body.records) {
      assert.match(r.at, h.RFC3339_MS_UTC);
      assert.match(r.hash, /^[0-9a-f]{64}$/);
    }
    assert.equal(trail.body.records[4].detail.userId, patient.id);
    assertApiError(await h.api(srv, 'GET', '/api/admin/audit?afterSeq=x', { token: admin.token }), 400, 'invalid_payload');

    const metrics = (await h.api(srv, 'GET', '/metrics')).body;
    assert.match(metrics, /^callrelay_admin_actions_total\{action="admin.room_closed"\} [1-9]/m);
  });

  test('live calls are listed and an admin ends one: both sides told, the record says so', T, async () => {
    const patient = await h.user(srv, 'patient');
    const doctor = await h.user(srv, 'doctor');
    const admin = await h.user(srv, 'admin');
    await h.appointment(srv, patient, doctor);
    const sp = await h.connect(srv, patient.token);
    const sd = await h.connect(srv, doctor.token);
    const placed = await h.ack(sd, 'call-user', { to: patient.id, callType: 'audio', offer: offer() });
    assert.equal(placed.ok, true, JSON.stringify(placed));
    await h.nextEvent(sp, 'incoming-call');
    assert.deepEqual(await h.ack(sp, 'answer-call', { callId: placed.callId, answer: answer() }), { ok: true });

    const calls = await h.api(srv, 'GET', '/api/admin/calls', { token: admin.token });
    const call = calls.body.calls.find((c) => c.callId === placed.callId);
    assert.equal(call.status, 'active');
    assert.deepEqual([call.callerId, call.calleeId, call.media], [doctor.id, patient.id, 'p2p']);

    const ended = await h.api(srv, 'POST', `/api/admin/calls/${placed.callId}/end`, { token: admin.token });
    assert.deepEqual([ended.status, ended.body], [200, { callId: placed.callId, endReason: 'ended-by-admin' }]);
    for (const s of [sp, sd]) {
      assert.deepEqual(await h.nextEvent(s, 'call-ended'), { callId: placed.callId, reason: 'ended-by-admin' });
    }
    const history = await h.api(srv, 'GET', '/api/calls', { token: patient.token });
    const record = history.body.calls.find((c) => c.callId === placed.callId);
    assert.deepEqual([record.status, record.endReason], ['ended', 'ended-by-admin']);
    assertApiError(await h.api(srv, 'POST', `/api/admin/calls/${placed.callId}/end`, { token: admin.token }), 404, 'not_found');
  });

  test('callrelay audit verify: intact, then an edited record is reported with a non-zero exit', T, async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'callrelay-audit-'));
    const dbUrl = `sqlite://${path.join(dir, 'audit.db')}?mode=rwc`;
    try {
      const server = await h.startServer({ dbUrl });
      const patient = await h.user(server, 'patient');
      const doctor = await h.user(server, 'doctor');
      const appt = await h.appointment(server, patient, doctor);
      const sp = await joined(server, patient, appt);
      assert.deepEqual(await h.ack(sp, 'leave-room', {}), { ok: true });
      await server.stop();

      let run = auditVerify(dbUrl);
      assert.equal(run.status, 0, run.out);
      assert.match(run.out, /intact: 2 records/);

      sqlite(dbUrl, `UPDATE audit_log SET actor_id = 'someone-else' WHERE seq = 1`);
      run = auditVerify(dbUrl);
      assert.equal(run.status, 1, run.out);
      assert.match(run.out, /BROKEN at record 1/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

async function until(what, check, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await h.sleep(100);
  }
}

describe('webhooks', () => {
  test('signed, in order, retried while the receiver refuses', T, async () => {
    const port = await h.freeTcpPort();
    const hooks = await h.webhookReceiver(port, { refuse: 3 });
    const server = await h.startServer({
      env: {
        CALLRELAY_WEBHOOKS__URLS: `http://127.0.0.1:${port}/hook`,
        CALLRELAY_WEBHOOKS__SECRET: HOOK_SECRET,
      },
    });
    try {
      const patient = await h.user(server, 'patient');
      const doctor = await h.user(server, 'doctor');
      const appt = await h.appointment(server, patient, doctor);
      const sp = await joined(server, patient, appt);
      const sd = await joined(server, doctor, appt);
      const chat = await h.ack(sp, 'chat-message', { text: 'private words' });
      const placed = await h.ack(sd, 'call-user', { to: patient.id, callType: 'video', offer: offer() });
      await h.nextEvent(sp, 'incoming-call');
      assert.deepEqual(await h.ack(sp, 'answer-call', { callId: placed.callId, answer: answer() }), { ok: true });
      assert.deepEqual(await h.ack(sd, 'end-call', { callId: placed.callId }), { ok: true });
      assert.deepEqual(await h.ack(sp, 'leave-room', {}), { ok: true });
      assert.deepEqual(await h.ack(sd, 'leave-room', {}), { ok: true });

      const expected = ['room_started', 'participant_joined', 'participant_joined', 'chat_message',
        'call_started', 'call_answered', 'call_ended', 'participant_left', 'participant_left', 'room_finished'];
      const events = await until('every event delivered', () => {
        const got = hooks.delivered();
        return got.length >= expected.length && got;
      });
      assert.deepEqual(events.map((e) => e.event), expected);
      assert.equal(new Set(events.map((e) => e.id)).size, events.length, 'one id per event');
      assert.equal(events[1].data.participant.userId, patient.id);
      assert.equal(events[1].data.appointmentId, appt.id);
      assert.deepEqual(events[3].data, { appointmentId: appt.id, messageId: chat.message.id, userId: patient.id });
      assert.ok(!hooks.requests.some((r) => r.body.includes('private words')), 'chat text never leaves');
      assert.equal(events[6].data.callId, placed.callId);
      assert.equal(events[6].data.endReason, 'hangup');
      assert.equal(events[9].data.appointmentId, appt.id);

      // The refused attempts were of the first event, retried with its same delivery id.
      const refused = hooks.requests.filter((r) => !r.accepted);
      assert.equal(refused.length, 3);
      const firstAccepted = hooks.requests.find((r) => r.accepted);
      for (const r of refused) {
        assert.equal(r.headers['x-callrelay-delivery'], firstAccepted.headers['x-callrelay-delivery']);
        assert.equal(r.body, firstAccepted.body);
      }
      const metrics = (await h.api(server, 'GET', '/metrics')).body;
      assert.match(metrics, /^callrelay_webhook_attempts_total\{outcome="failed"\} 3$/m);
      assert.match(metrics, /^callrelay_webhook_outbox_pending 0$/m);
    } finally {
      await hooks.close();
    }
  });

  test('events queued while the receiver is down survive a server restart', T, async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'callrelay-hooks-'));
    const dbUrl = `sqlite://${path.join(dir, 'hooks.db')}?mode=rwc`;
    const port = await h.freeTcpPort(); // nobody listens: connection refused
    const env = {
      CALLRELAY_WEBHOOKS__URLS: `http://127.0.0.1:${port}/hook`,
      CALLRELAY_WEBHOOKS__SECRET: HOOK_SECRET,
    };
    let hooks;
    let second;
    try {
      const first = await h.startServer({ env, dbUrl });
      const patient = await h.user(first, 'patient');
      const doctor = await h.user(first, 'doctor');
      const appt = await h.appointment(first, patient, doctor);
      const sp = await joined(first, patient, appt);
      assert.deepEqual(await h.ack(sp, 'leave-room', {}), { ok: true });
      await until('a failed attempt', async () => /^callrelay_webhook_attempts_total\{outcome="failed"\} [1-9]/m
        .test((await h.api(first, 'GET', '/metrics')).body));
      await first.stop();

      hooks = await h.webhookReceiver(port);
      second = await h.startServer({ env, dbUrl });
      const events = await until('the queued events', () => {
        const got = hooks.delivered();
        return got.length >= 4 && got;
      });
      assert.deepEqual(events.map((e) => e.event),
        ['room_started', 'participant_joined', 'participant_left', 'room_finished']);
      assert.ok(events.every((e) => e.data.appointmentId === appt.id));
    } finally {
      await hooks?.close();
      await second?.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
