// Several nodes (cluster.redis_url) sharing a PostgreSQL database and a Redis: what is shared so
// far (docs/cluster.md). Needs CALLRELAY_NODE_PG_URL and CALLRELAY_NODE_REDIS_URL (an emptied
// Redis database), which tests/node_clients.rs hands over; without them it says it skipped.

import assert from 'node:assert/strict';
import { after, afterEach, describe, test } from 'node:test';

import * as h from './harness.mjs';

const T = { timeout: 60000 };
const REDIS_URL = process.env.CALLRELAY_NODE_REDIS_URL || '';

after(h.cleanup);
afterEach(h.closeSockets);

function skipWithout(t) {
  if (h.PG_URL && REDIS_URL) return false;
  console.log('\n*** SKIPPED cluster: CALLRELAY_NODE_PG_URL and CALLRELAY_NODE_REDIS_URL are needed ***\n');
  t.skip('no PostgreSQL or Redis');
  return true;
}

/** A consultation on `server`: both join, the patient chats, both leave. */
async function consultation(server) {
  const patient = await h.user(server, 'patient');
  const doctor = await h.user(server, 'doctor');
  const appt = await h.appointment(server, patient, doctor);
  const sockets = [];
  for (const u of [patient, doctor]) {
    const s = await h.connect(server, u.token);
    assert.equal((await h.ack(s, 'join-room', { appointmentId: appt.id })).ok, true);
    sockets.push(s);
  }
  assert.equal((await h.ack(sockets[0], 'chat-message', { text: 'hello' })).ok, true);
  for (const s of sockets) assert.deepEqual(await h.ack(s, 'leave-room', {}), { ok: true });
  return appt.id;
}

describe('cluster', () => {
  test('the nodes write to one webhook outbox and one of them delivers each event once', T, async (t) => {
    if (skipWithout(t)) return;
    const port = await h.freeTcpPort();
    // A slow receiver: a delivery in progress is still in the outbox when the other node
    // looks, so two senders would both deliver it.
    const hooks = await h.webhookReceiver(port, { delayMs: 300 });
    const node = (id) => h.startServer({
      dbUrl: h.PG_URL,
      env: {
        CALLRELAY_CLUSTER__REDIS_URL: REDIS_URL,
        CALLRELAY_CLUSTER__NODE_ID: id,
        CALLRELAY_CLUSTER__LEASE_SECS: '3',
        CALLRELAY_WEBHOOKS__URLS: `http://127.0.0.1:${port}/hook`,
        CALLRELAY_WEBHOOKS__SECRET: h.HOOK_SECRET,
      },
    });
    try {
      const [one, two] = [await node('one'), await node('two')];
      const rooms = [await consultation(one), await consultation(two)];
      const perRoom = ['room_started', 'participant_joined', 'participant_joined', 'chat_message',
        'participant_left', 'participant_left', 'room_finished'];
      const ours = () => hooks.delivered().filter((e) => rooms.includes(e.data.appointmentId));
      const deadline = Date.now() + 40000;
      while (ours().length < 2 * perRoom.length) {
        assert.ok(Date.now() < deadline, `delivered: ${JSON.stringify(ours().map((e) => e.event))}`);
        await h.sleep(100);
      }
      // Time for a second sender to deliver again, if there were one.
      await h.sleep(3000);
      const events = ours();
      assert.equal(new Set(events.map((e) => e.id)).size, events.length, 'no event delivered twice');
      for (const room of rooms) {
        assert.deepEqual(events.filter((e) => e.data.appointmentId === room).map((e) => e.event), perRoom);
      }
    } finally {
      await hooks.close();
    }
  });
});
