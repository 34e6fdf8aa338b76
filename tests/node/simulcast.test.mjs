// The simulcast hint `sfu-video-size {roomId, publisherId, width, height}` over the official
// socket.io-client: a member of a relayed room tells the size it shows another member's video
// at (counted on /metrics); the payload is checked completely; only members may send it.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import * as h from './harness.mjs';

const T = { timeout: 60000 };

let srv;

before(async () => {
  srv = await h.startServer();
});
after(h.cleanup);
afterEach(h.closeSockets);

async function joined(u, appt) {
  const socket = await h.connect(srv, u.token);
  const res = await h.ack(socket, 'join-room', { appointmentId: appt.id });
  assert.equal(res.ok, true, `join-room for ${u.id}: ${JSON.stringify(res)}`);
  return socket;
}

/** A consult room of a patient and its doctor, relayed (`sfu-join`): both are on the SFU. */
async function relayedRoom() {
  const patient = await h.user(srv, 'patient');
  const doctor = await h.user(srv, 'doctor');
  const appt = await h.appointment(srv, patient, doctor);
  const sp = await joined(patient, appt);
  const sd = await joined(doctor, appt);
  assert.deepEqual(await h.ack(sd, 'sfu-join', { roomId: appt.id, reason: 'p2p-failed' }), { ok: true });
  for (const s of [sp, sd]) {
    assert.deepEqual(await h.nextEvent(s, 'relay-activated'), { roomId: appt.id, reason: 'p2p-failed' });
  }
  return { appt, sp, sd };
}

async function counted(outcome) {
  const text = (await h.api(srv, 'GET', '/metrics')).body;
  const m = text.match(new RegExp(
    `^callrelay_signaling_events_total\\{event="sfu-video-size",outcome="${outcome}"\\} (\\d+)$`, 'm'));
  return m ? Number(m[1]) : 0;
}

function code(res) {
  return res.ok ? 'ok' : res.error?.code;
}

describe('sfu-video-size', () => {
  test('a member of a relayed room tells the size it shows another member at', T, async () => {
    const { appt, sp, sd } = await relayedRoom();
    const before = await counted('ok');
    for (const [width, height] of [[640, 360], [1280, 720], [0, 0], [16384, 16384], [1, 1]]) {
      const res = await h.ack(sp, 'sfu-video-size', { roomId: appt.id, publisherId: sd.id, width, height });
      assert.deepEqual(res, { ok: true }, `${width}x${height}`);
    }
    assert.deepEqual(
      await h.ack(sd, 'sfu-video-size', { roomId: appt.id, publisherId: sp.id, width: 320, height: 240 }),
      { ok: true },
    );
    assert.equal(await counted('ok'), before + 6);

    // A publisher the SFU does not have in the room (nobody, or oneself) is not_found.
    for (const publisherId of ['no-such-socket', sp.id]) {
      const res = await h.ack(sp, 'sfu-video-size', { roomId: appt.id, publisherId, width: 640, height: 360 });
      assert.equal(code(res), 'not_found', `${publisherId}: ${JSON.stringify(res)}`);
    }
  });

  test('anything but {roomId, publisherId, width, height} in whole pixels up to 16384 is invalid_payload', T, async () => {
    const { appt, sp, sd } = await relayedRoom();
    const good = { roomId: appt.id, publisherId: sd.id, width: 640, height: 360 };
    const without = (key) => Object.fromEntries(Object.entries(good).filter(([k]) => k !== key));
    const bad = [
      without('roomId'),
      without('publisherId'),
      without('width'),
      without('height'),
      {},
      { ...good, width: -1 },
      { ...good, height: -360 },
      { ...good, width: 16385 },
      { ...good, height: 100000 },
      { ...good, width: 2 ** 32 },
      { ...good, width: 640.5 },
      { ...good, height: 0.1 },
      { ...good, width: '640' },
      { ...good, height: null },
      { ...good, width: true },
      { ...good, publisherId: '' },
      { ...good, publisherId: 'a b' },
      { ...good, publisherId: 7 },
      { ...good, roomId: 'x'.repeat(129) },
      { ...good, devicePixelRatio: 2 },
      { ...good, kind: 'video' },
    ];
    const before = await counted('invalid_payload');
    for (const payload of bad) {
      const res = await h.ack(sp, 'sfu-video-size', payload);
      assert.equal(code(res), 'invalid_payload', `${JSON.stringify(payload)}: ${JSON.stringify(res)}`);
    }
    for (const payload of ['640x360', [appt.id, sd.id, 640, 360], 5]) {
      const res = await h.ack(sp, 'sfu-video-size', payload);
      assert.equal(code(res), 'invalid_payload', `${JSON.stringify(payload)}: ${JSON.stringify(res)}`);
    }
    assert.equal(await counted('invalid_payload'), before + bad.length + 3);
    // Still a member in good standing: the right shape goes through.
    assert.deepEqual(await h.ack(sp, 'sfu-video-size', good), { ok: true });
  });

  test('a socket that is not a member of the room is refused like the other sfu events', T, async () => {
    const { appt, sp, sd } = await relayedRoom();
    const outsider = await h.user(srv, 'patient');
    const so = await h.connect(srv, outsider.token);
    const hint = { roomId: appt.id, publisherId: sd.id, width: 640, height: 360 };
    const refused = code(await h.ack(so, 'sfu-leave', { roomId: appt.id }));
    assert.equal(refused, 'forbidden');
    assert.equal(code(await h.ack(so, 'sfu-video-size', hint)), refused);
    assert.equal(code(await h.ack(so, 'sfu-restart-ice', { roomId: appt.id })), refused);

    // Nor in another room of its own: membership is of the room named.
    const doctor = await h.user(srv, 'doctor');
    const other = await h.appointment(srv, outsider, doctor);
    assert.equal((await h.ack(so, 'join-room', { appointmentId: other.id })).ok, true);
    assert.equal(code(await h.ack(so, 'sfu-video-size', hint)), 'forbidden');

    // A member who left is an outsider too.
    assert.deepEqual(await h.ack(sp, 'leave-room', {}), { ok: true });
    assert.equal(code(await h.ack(sp, 'sfu-video-size', hint)), 'forbidden');
  });
});
