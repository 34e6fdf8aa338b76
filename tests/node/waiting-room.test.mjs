// The waiting room (issue 14, `consult.waiting_room`) over the official socket.io-client: a patient
// who comes before being admitted waits (`join-room` acks `{waiting:true}`); every socket of the
// doctor, in the room or not, sees the lobby (`waiting-room`); the doctor (or an admin) admits or
// declines; admission lasts for the consultation (another device, a reconnection) until the room
// empties; leaving or disconnecting leaves the lobby; it is all in the audit trail and webhooks'
// names; a waiting patient does not hold up a drain; with the waiting room off nobody waits.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import * as h from './harness.mjs';

const T = { timeout: 30000 };

let srv; // waiting room on (the default)

before(async () => {
  srv = await h.startServer({ env: { CALLRELAY_CONSULT__WAITING_ROOM: 'true' } });
});
after(h.cleanup);
afterEach(h.closeSockets);

async function consult(server = srv) {
  const patient = await h.user(server, 'patient', 'Pat Smith');
  const doctor = await h.user(server, 'doctor', 'Dr Who');
  const appt = await h.appointment(server, patient, doctor);
  return { patient, doctor, appt };
}

function peerOf(socket, u) {
  return { socketId: socket.id, userId: u.id, name: u.name, role: u.role, avatarSeed: u.id };
}

function assertError(res, code) {
  assert.equal(res.ok, false, `expected error ${code}, got ${JSON.stringify(res)}`);
  assert.equal(res.error?.code, code, `expected ${code}, got ${JSON.stringify(res)}`);
}

/** Connects `u` and joins `appt` as a member (not waiting). */
async function joined(server, u, appt, extra = {}) {
  const socket = await h.connect(server, u.token);
  const res = await h.ack(socket, 'join-room', { appointmentId: appt.id, ...extra });
  assert.equal(res.ok, true, `join-room for ${u.id}: ${JSON.stringify(res)}`);
  assert.equal(res.waiting, undefined, `${u.id} entered: ${JSON.stringify(res)}`);
  await h.nextEvent(socket, 'existing-peers');
  return socket;
}

/** Connects `u` and joins `appt`, which makes it wait; returns [socket, ack]. */
async function waiting(server, u, appt, extra = {}) {
  const socket = await h.connect(server, u.token);
  const res = await h.ack(socket, 'join-room', { appointmentId: appt.id, ...extra });
  assert.equal(res.ok, true, JSON.stringify(res));
  assert.equal(res.waiting, true, `${u.id} waits: ${JSON.stringify(res)}`);
  assert.equal(res.selfId, socket.id);
  assert.equal(res.appointmentId, appt.id);
  assert.match(res.since, h.RFC3339_MS_UTC);
  return [socket, res];
}

/** The next `waiting-room` for `appt` on `socket`: its `waiting` list. */
async function lobby(socket, appt) {
  const update = await h.nextEvent(socket, 'waiting-room');
  assert.deepEqual(Object.keys(update).sort(), ['appointmentId', 'waiting']);
  assert.equal(update.appointmentId, appt.id);
  return update.waiting;
}

function entry(socket, u, since) {
  return { userId: u.id, name: u.name, socketId: socket.id, since };
}

async function trail(server, appt) {
  const admin = await h.user(server, 'admin');
  const res = await h.api(server, 'GET', `/api/admin/audit?appointmentId=${appt.id}`, { token: admin.token });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body.records;
}

describe('waiting room', () => {
  test('a patient waits; the doctor, on two devices in and out of the room, sees it and admits', T, async () => {
    const { patient, doctor, appt } = await consult();
    const list = await h.connect(srv, doctor.token); // the appointment list, out of the room

    const [sp, ack] = await waiting(srv, patient, appt);
    assert.deepEqual(await lobby(list, appt), [entry(sp, patient, ack.since)]);
    await h.noEvent(sp, 'existing-peers', 200);
    // Not in the room: nothing reaches the room from it.
    assertError(await h.ack(sp, 'chat-message', { text: 'hello?' }), 'forbidden');
    assertError(await h.ack(sp, 'media-state', { audio: true, video: true }), 'forbidden');
    // Asking again changes nothing.
    const again = await h.ack(sp, 'join-room', { appointmentId: appt.id });
    assert.deepEqual(again, { ok: true, ...ack });
    await h.noEvent(list, 'waiting-room', 200);

    // The doctor's other device: told on connecting, and again on joining the room.
    const room = await h.connect(srv, doctor.token);
    assert.deepEqual(await lobby(room, appt), [entry(sp, patient, ack.since)]);
    const joinedAck = await h.ack(room, 'join-room', { appointmentId: appt.id });
    assert.equal(joinedAck.ok, true);
    assert.deepEqual(joinedAck.peers, [], 'the waiting patient is not in the room');
    assert.deepEqual(await lobby(room, appt), [entry(sp, patient, ack.since)]);
    await h.nextEvent(room, 'existing-peers');

    // Admitted: the patient is in, as if it had joined.
    assert.deepEqual(await h.ack(room, 'admit', { appointmentId: appt.id, userId: patient.id }), { ok: true, admitted: 1 });
    assert.deepEqual(await h.nextEvent(sp, 'existing-peers'), [peerOf(room, doctor)]);
    const admitted = await h.nextEvent(sp, 'admitted');
    assert.equal(admitted.appointmentId, appt.id);
    assert.equal(admitted.selfId, sp.id);
    assert.deepEqual(admitted.peers, [peerOf(room, doctor)]);
    assert.equal(admitted.mode, 'p2p-first');
    assert.equal(typeof admitted.p2pTimeoutMs, 'number');
    assert.ok(Array.isArray(admitted.iceServers));
    assert.deepEqual(await h.nextEvent(room, 'peer-joined'), peerOf(sp, patient));
    assert.deepEqual(await lobby(room, appt), []);
    assert.deepEqual(await lobby(list, appt), []);

    // They see each other: signals and chat flow.
    const offer = { type: 'offer', sdp: h.sdp('offer') };
    assert.equal((await h.ack(sp, 'signal', { to: room.id, type: 'offer', payload: offer })).ok, true);
    assert.equal((await h.nextEvent(room, 'signal')).from, sp.id);
    assert.equal((await h.ack(sp, 'chat-message', { text: 'Hello doctor' })).ok, true);
    assert.equal((await h.nextEvent(room, 'chat-message')).text, 'Hello doctor');

    // Admitting someone who does not wait: not_found.
    assertError(await h.ack(room, 'admit', { appointmentId: appt.id, userId: patient.id }), 'not_found');

    const records = (await trail(srv, appt)).map((r) => [r.actorId, r.action, r.detail.userId ?? null]);
    assert.deepEqual(records, [
      [patient.id, 'waiting.entered', null],
      [doctor.id, 'room.joined', null],
      [doctor.id, 'waiting.admitted', patient.id],
      [patient.id, 'room.joined', null],
    ]);
  });

  test('declined: the patient is told why and stays out; it may ask again', T, async () => {
    const { patient, doctor, appt } = await consult();
    const list = await h.connect(srv, doctor.token);
    const [sp] = await waiting(srv, patient, appt);
    assert.equal((await lobby(list, appt)).length, 1);

    const res = await h.ack(list, 'decline', { appointmentId: appt.id, userId: patient.id, reason: 'Please book another time' });
    assert.deepEqual(res, { ok: true, declined: 1 });
    assert.deepEqual(await h.nextEvent(sp, 'declined'), { appointmentId: appt.id, reason: 'Please book another time' });
    assert.deepEqual(await lobby(list, appt), []);
    assertError(await h.ack(sp, 'chat-message', { text: 'hello?' }), 'forbidden');
    await h.noEvent(sp, 'admitted', 200);
    assertError(await h.ack(list, 'decline', { appointmentId: appt.id, userId: patient.id }), 'not_found');

    // The doctor joins: the patient is not there. The patient asks again, declined without a reason.
    const room = await joined(srv, doctor, appt);
    const [again] = await waiting(srv, patient, appt);
    assert.equal((await lobby(room, appt)).length, 1);
    assert.deepEqual(await h.ack(room, 'decline', { appointmentId: appt.id, userId: patient.id }), { ok: true, declined: 1 });
    assert.deepEqual(await h.nextEvent(again, 'declined'), { appointmentId: appt.id, reason: null });

    const actions = (await trail(srv, appt)).map((r) => [r.actorId, r.action]);
    assert.deepEqual(actions, [
      [patient.id, 'waiting.entered'],
      [doctor.id, 'waiting.declined'],
      [doctor.id, 'room.joined'],
      [patient.id, 'waiting.entered'],
      [doctor.id, 'waiting.declined'],
    ]);
    // The reason goes to the patient only.
    assert.ok(!JSON.stringify(await trail(srv, appt)).includes('another time'));
  });

  test('who may admit: the doctor and admins; not the patient, another doctor or a waiting socket', T, async () => {
    const { patient, doctor, appt } = await consult();
    const [sp] = await waiting(srv, patient, appt);
    const other = await h.connect(srv, (await h.user(srv, 'doctor')).token);
    const staff = await h.connect(srv, (await h.user(srv, 'staff')).token);
    for (const s of [sp, other, staff]) {
      assertError(await h.ack(s, 'admit', { appointmentId: appt.id, userId: patient.id }), 'forbidden');
      assertError(await h.ack(s, 'decline', { appointmentId: appt.id, userId: patient.id }), 'forbidden');
    }
    const sd = await h.connect(srv, doctor.token);
    for (const bad of [{}, { appointmentId: appt.id }, { appointmentId: appt.id, userId: 'a b' },
      { appointmentId: appt.id, userId: patient.id, extra: 1 }, [appt.id, patient.id]]) {
      assertError(await h.ack(sd, 'admit', bad), 'invalid_payload');
    }
    assertError(await h.ack(sd, 'decline', { appointmentId: appt.id, userId: patient.id, reason: 'x'.repeat(201) }), 'invalid_payload');
    assertError(await h.ack(sd, 'admit', { appointmentId: 'no-such-appt', userId: patient.id }), 'not_found');
    assertError(await h.ack(sd, 'admit', { appointmentId: appt.id, userId: 'nobody' }), 'not_found');
    // Still waiting after all that.
    await h.noEvent(sp, 'admitted', 100);
    await h.noEvent(sp, 'declined', 100);

    // An admin in the room sees the lobby and admits; admins and doctors never wait.
    const admin = await h.user(srv, 'admin');
    const sa = await h.connect(srv, admin.token);
    const res = await h.ack(sa, 'join-room', { appointmentId: appt.id });
    assert.equal(res.ok, true);
    assert.equal(res.waiting, undefined);
    assert.deepEqual((await lobby(sa, appt)).map((w) => w.socketId), [sp.id]);
    assert.deepEqual(await h.ack(sa, 'admit', { appointmentId: appt.id, userId: patient.id }), { ok: true, admitted: 1 });
    assert.deepEqual((await h.nextEvent(sp, 'admitted')).peers.map((p) => p.userId), [admin.id]);
    const admission = (await trail(srv, appt)).find((r) => r.action === 'waiting.admitted');
    assert.equal(admission.actorId, admin.id);
    assert.equal(admission.detail.byRole, 'admin');
  });

  test('leaving or disconnecting leaves the lobby; a reconnection keeps its place', T, async () => {
    const { patient, doctor, appt } = await consult();
    const list = await h.connect(srv, doctor.token);
    const [first, ack] = await waiting(srv, patient, appt);
    assert.equal((await lobby(list, appt)).length, 1);
    assert.deepEqual(await h.ack(first, 'leave-room', {}), { ok: true });
    assert.deepEqual(await lobby(list, appt), []);

    // Back on a new connection that names the waiting one: replaces it, same place in line.
    const [second, ack2] = await waiting(srv, patient, appt);
    assert.equal((await lobby(list, appt)).length, 1);
    assert.notEqual(ack2.since, ack.since, 'a new wait after leaving');
    const secondId = second.id;
    const [third, ack3] = await waiting(srv, patient, appt, { previousSocketId: secondId });
    assert.equal(ack3.since, ack2.since, 'the wait goes on');
    const updates = [await lobby(list, appt), await lobby(list, appt)];
    assert.deepEqual(updates.at(-1), [entry(third, patient, ack2.since)]);
    await new Promise((resolve) => (second.connected ? second.once('disconnect', resolve) : resolve()));

    h.closeSocket(third);
    assert.deepEqual(await lobby(list, appt), []);
    const actions = (await trail(srv, appt)).map((r) => [r.action, r.detail.reason ?? null]);
    assert.deepEqual(actions, [
      ['waiting.entered', null],
      ['waiting.left', 'left'],
      ['waiting.entered', null],
      ['waiting.entered', null],
      ['waiting.left', 'replaced'],
      ['waiting.left', 'disconnected'],
    ]);
  });

  test('admitted for the consultation: back on a new connection or another device without waiting, until the room empties', T, async () => {
    const { patient, doctor, appt } = await consult();
    const sd = await joined(srv, doctor, appt);
    const [sp] = await waiting(srv, patient, appt);
    await lobby(sd, appt);
    assert.equal((await h.ack(sd, 'admit', { appointmentId: appt.id, userId: patient.id })).ok, true);
    await h.nextEvent(sp, 'admitted');
    await h.nextEvent(sd, 'peer-joined');
    await lobby(sd, appt);

    // Its connection drops; it comes back naming its old socket.
    const old = sp.id;
    h.closeSocket(sp);
    assert.equal((await h.nextEvent(sd, 'peer-left')).reason, 'disconnected');
    const back = await joined(srv, patient, appt, { previousSocketId: old });
    assert.equal((await h.nextEvent(sd, 'peer-joined')).replaces, old);
    // A second device of the patient walks in too.
    const tablet = await joined(srv, patient, appt);
    assert.equal((await h.nextEvent(sd, 'peer-joined')).socketId, tablet.id);
    await h.noEvent(sd, 'waiting-room', 200);

    // Removed by an administrator: let in again only by a host (the doctor stays in the room).
    const admin = await h.user(srv, 'admin');
    const removed = await h.api(srv, 'DELETE', `/api/admin/rooms/${appt.id}/participants/${patient.id}`, { token: admin.token });
    assert.equal(removed.status, 200, JSON.stringify(removed.body));
    await h.nextEvent(back, 'removed-from-room');
    await h.nextEvent(tablet, 'removed-from-room');
    const [again] = await waiting(srv, patient, appt);
    await lobby(sd, appt);
    assert.equal((await h.ack(sd, 'admit', { appointmentId: appt.id, userId: patient.id })).ok, true);
    await h.nextEvent(again, 'admitted');
    await lobby(sd, appt);

    // Everyone leaves: the consultation is over, the next visit waits again.
    for (const s of [again, sd]) assert.deepEqual(await h.ack(s, 'leave-room', {}), { ok: true });
    await waiting(srv, patient, appt);
  });

  test('a patient whose room emptied with its connection comes back without waiting', T, async () => {
    const { patient, doctor, appt } = await consult();
    const sd = await joined(srv, doctor, appt);
    const [sp] = await waiting(srv, patient, appt);
    await lobby(sd, appt);
    assert.equal((await h.ack(sd, 'admit', { appointmentId: appt.id, userId: patient.id })).ok, true);
    await h.nextEvent(sp, 'admitted');
    assert.deepEqual(await h.ack(sd, 'leave-room', {}), { ok: true });
    // The patient, alone in the room, loses its connection: the room empties.
    const old = sp.id;
    h.closeSocket(sp);
    const admin = await h.user(srv, 'admin');
    const rooms = async () => (await h.api(srv, 'GET', '/api/admin/rooms', { token: admin.token })).body.rooms
      .filter((r) => r.appointmentId === appt.id);
    for (let i = 0; (await rooms()).length > 0; i += 1) {
      assert.ok(i < 100, 'the room empties');
      await h.sleep(50);
    }
    // Without naming it, it waits: the consultation is over for the server.
    const [w] = await waiting(srv, patient, appt);
    h.closeSocket(w);
    await joined(srv, patient, appt, { previousSocketId: old });
  });
});

describe('waiting room and the drain', () => {
  test('a waiting patient does not hold the drain up; admission goes on only into a room in progress', T, async () => {
    const server = await h.startServer({
      env: { CALLRELAY_CONSULT__WAITING_ROOM: 'true', CALLRELAY_SERVER__DRAIN_TIMEOUT_SECS: '300' },
    });
    const busy = await consult(server);
    const idle = await consult(server);
    const sd = await joined(server, busy.doctor, busy.appt);
    const [sp] = await waiting(server, busy.patient, busy.appt);
    await lobby(sd, busy.appt);
    const idleDoctor = await h.connect(server, idle.doctor.token);
    const [lonely] = await waiting(server, idle.patient, idle.appt);
    await lobby(idleDoctor, idle.appt);

    server.kill('SIGTERM');
    await h.nextEvent(sd, 'server-draining', 5000);
    await h.nextEvent(lonely, 'server-draining', 5000);
    // A room in progress still takes its patient in; an empty one does not open.
    assert.equal((await h.ack(sd, 'admit', { appointmentId: busy.appt.id, userId: busy.patient.id })).ok, true);
    await h.nextEvent(sp, 'admitted');
    assertError(await h.ack(idleDoctor, 'admit', { appointmentId: idle.appt.id, userId: idle.patient.id }), 'unavailable');
    const late = await consult(server);
    assertError(await h.ack(await h.connect(server, late.patient.token), 'join-room', { appointmentId: late.appt.id }), 'unavailable');

    // Once the consultation ends the process exits, though a patient still waits elsewhere.
    for (const s of [sp, sd]) assert.deepEqual(await h.ack(s, 'leave-room', {}), { ok: true });
    const exit = await Promise.race([server.exited, h.sleep(15000, null)]);
    assert.deepEqual(exit, { code: 0, signal: null }, 'exited by itself');
    await server.stop();
  });
});

describe('waiting room off', () => {
  test('patients enter at once and nobody is told of a lobby', T, async () => {
    const off = await h.startServer({ env: { CALLRELAY_CONSULT__WAITING_ROOM: 'false' } });
    const { patient, doctor, appt } = await consult(off);
    const list = await h.connect(off, doctor.token);
    const sp = await joined(off, patient, appt);
    const sd = await joined(off, doctor, appt);
    assert.deepEqual(await h.nextEvent(sp, 'peer-joined'), peerOf(sd, doctor));
    await h.noEvent(list, 'waiting-room', 200);
    assertError(await h.ack(sd, 'admit', { appointmentId: appt.id, userId: patient.id }), 'not_found');
  });
});
