// Relay activation and ordering over the official socket.io-client: a third member makes every
// member's room relayed by size (whatever relayed it before, counted on /metrics), and a joiner
// of a relayed room always has its join-room ack before its first sfu-subscribe-offer (with a
// real publisher in the room: headless Chromium with a fake camera).

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import * as h from './harness.mjs';
import { browserMissing, closeBrowser, publishCamera } from './browser.mjs';

const T = { timeout: 60000 };

let srv; // p2p-first: rooms relay on request or by size
let sfu; // sfu-only, media on loopback: a publisher connects at once

before(async () => {
  [srv, sfu] = await Promise.all([
    h.startServer(),
    h.startServer({
      env: { CALLRELAY_MEDIA__MODE: 'sfu-only', CALLRELAY_MEDIA__BIND_IP: '127.0.0.1' },
    }),
  ]);
});
after(async () => {
  await closeBrowser();
  await h.cleanup();
});
afterEach(h.closeSockets);

async function joined(server, u, appt) {
  const socket = await h.connect(server, u.token);
  const res = await h.ack(socket, 'join-room', { appointmentId: appt.id });
  assert.equal(res.ok, true, `join-room for ${u.id}: ${JSON.stringify(res)}`);
  return socket;
}

async function activations(server, reason) {
  const text = (await h.api(server, 'GET', '/metrics')).body;
  const m = text.match(new RegExp(`^callrelay_relay_activations_total\\{reason="${reason}"\\} (\\d+)$`, 'm'));
  return m ? Number(m[1]) : 0;
}

describe('relay activation', () => {
  test('a third member turns a room relayed by p2p-failed into room-size for every member', T, async () => {
    const patient = await h.user(srv, 'patient');
    const doctor = await h.user(srv, 'doctor');
    const admin = await h.user(srv, 'admin');
    const appt = await h.appointment(srv, patient, doctor);
    const sp = await joined(srv, patient, appt);
    const sd = await joined(srv, doctor, appt);

    assert.deepEqual(await h.ack(sd, 'sfu-join', { roomId: appt.id, reason: 'p2p-failed' }), { ok: true });
    for (const s of [sp, sd]) {
      assert.deepEqual(await h.nextEvent(s, 'relay-activated'), { roomId: appt.id, reason: 'p2p-failed' });
    }
    const roomSizeBefore = await activations(srv, 'room-size');
    const failedBefore = await activations(srv, 'p2p-failed');

    const sa = await joined(srv, admin, appt);
    for (const s of [sp, sd, sa]) {
      assert.deepEqual(await h.nextEvent(s, 'relay-activated'), { roomId: appt.id, reason: 'room-size' });
    }
    // Once each: the newcomer is not told a second time with the room's old reason.
    for (const s of [sp, sd, sa]) await h.noEvent(s, 'relay-activated', s === sp ? 300 : 0);
    assert.equal(await activations(srv, 'room-size'), roomSizeBefore + 1);
    assert.equal(await activations(srv, 'p2p-failed'), failedBefore);

    // A fourth member finds the room relayed by size: only it is told, nothing is counted.
    const other = await h.user(srv, 'admin');
    const so = await joined(srv, other, appt);
    assert.deepEqual(await h.nextEvent(so, 'relay-activated'), { roomId: appt.id, reason: 'room-size' });
    for (const s of [sp, sd, sa]) await h.noEvent(s, 'relay-activated', s === sp ? 300 : 0);
    assert.equal(await activations(srv, 'room-size'), roomSizeBefore + 1);
  });
});

describe('ordering', () => {
  test('a joiner of a relayed room gets its join-room ack before any sfu-subscribe-offer', T, async (t) => {
    const missing = await browserMissing();
    if (missing) {
      t.skip(missing);
      return;
    }
    const patient = await h.user(sfu, 'patient');
    const doctor = await h.user(sfu, 'doctor');
    const appt = await h.appointment(sfu, patient, doctor);
    const sp = await joined(sfu, patient, appt);
    assert.deepEqual(await h.nextEvent(sp, 'relay-activated'), { roomId: appt.id, reason: 'forced' });
    await publishCamera(sfu, sp, appt.id);

    const sd = await h.connect(sfu, doctor.token);
    let order = [];
    sd.onAny((event) => order.push(event));
    for (let round = 1; round <= 8; round++) {
      order = [];
      const acked = new Promise((resolve) => {
        sd.timeout(h.ACK_MS).emit('join-room', { appointmentId: appt.id }, (err, res) => {
          order.push('ack');
          resolve(err ? { ok: false, error: String(err) } : res);
        });
      });
      const offer = await h.nextEvent(sd, 'sfu-subscribe-offer', 5000);
      assert.equal(offer.roomId, appt.id);
      assert.match(offer.sdp, /^v=0/);
      assert.equal((await acked).ok, true);
      assert.deepEqual(await h.nextEvent(sd, 'relay-activated'), { roomId: appt.id, reason: 'forced' });
      const ackAt = order.indexOf('ack');
      const offerAt = order.indexOf('sfu-subscribe-offer');
      assert.ok(ackAt >= 0 && ackAt < offerAt, `round ${round}: ${JSON.stringify(order)}`);
      // relay-activated follows the ack too (its order with the offer is not fixed).
      assert.ok(order.indexOf('relay-activated') > ackAt, `round ${round}: ${JSON.stringify(order)}`);
      assert.deepEqual(await h.ack(sd, 'leave-room', {}), { ok: true });
      // Whatever else came for this membership is dropped before the next round.
      await h.sleep(50);
      sd.inbox.length = 0;
    }
  });
});
