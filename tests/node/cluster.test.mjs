// Several nodes (cluster.redis_url) sharing a PostgreSQL database and a Redis: consult rooms and
// waiting rooms across nodes, a dead node's members, the webhook outbox (docs/cluster.md). Needs CALLRELAY_NODE_PG_URL and CALLRELAY_NODE_REDIS_URL (an emptied
// Redis database), which tests/node_clients.rs hands over; without them it says it skipped.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { after, afterEach, describe, test } from 'node:test';

import * as h from './harness.mjs';
import { join, keepPeerConnections, launchChromium } from '../../web/smoke-kit.mjs';

const WEB_DIR = fileURLToPath(new URL('../../web', import.meta.url));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

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

/** A node of the test cluster, its lease 3 s (`env` added). */
function clusterNode(id, env = {}) {
  return h.startServer({
    dbUrl: h.PG_URL,
    env: {
      CALLRELAY_CLUSTER__REDIS_URL: REDIS_URL,
      CALLRELAY_CLUSTER__NODE_ID: id,
      CALLRELAY_CLUSTER__LEASE_SECS: '3',
      ...env,
    },
  });
}

/** A patient and a doctor (users of `server`) and their confirmed appointment. */
async function patientAndDoctor(server) {
  const patient = await h.user(server, 'patient');
  const doctor = await h.user(server, 'doctor');
  const appt = await h.appointment(server, patient, doctor);
  return { patient, doctor, appt };
}

describe('cluster', () => {
  test('members connected to different nodes share one consult room', T, async (t) => {
    if (skipWithout(t)) return;
    const [one, two] = [await clusterNode('room-one'), await clusterNode('room-two')];
    const { patient, doctor, appt } = await patientAndDoctor(one);
    const p = await h.connect(one, patient.token);
    const d = await h.connect(two, doctor.token);

    const pJoin = await h.ack(p, 'join-room', { appointmentId: appt.id });
    assert.deepEqual(pJoin.peers, []);
    const dJoin = await h.ack(d, 'join-room', { appointmentId: appt.id });
    assert.deepEqual(dJoin.peers.map((x) => [x.socketId, x.userId]), [[p.id, patient.id]]);
    const joined = await h.nextEvent(p, 'peer-joined');
    assert.equal(joined.socketId, d.id);

    // Offers, answers and candidates cross the nodes, and only to members.
    assert.equal((await h.ack(d, 'signal', { to: p.id, type: 'offer', payload: { type: 'offer', sdp: h.sdp('offer') } })).ok, true);
    const offer = await h.nextEvent(p, 'signal');
    assert.equal(offer.from, d.id);
    assert.equal(offer.type, 'offer');
    const outsider = await h.connect(two, (await h.user(two, 'patient')).token);
    assert.equal((await h.ack(outsider, 'signal', { to: p.id, type: 'offer', payload: { type: 'offer', sdp: h.sdp('offer') } })).error.code, 'forbidden');

    // Chat reaches both, stored once.
    const sent = await h.ack(p, 'chat-message', { text: 'across nodes' });
    assert.equal(sent.ok, true);
    assert.equal((await h.nextEvent(d, 'chat-message')).id, sent.message.id);
    const transcript = await h.api(two, 'GET', `/api/appointments/${appt.id}/messages`, { token: doctor.token });
    assert.deepEqual(transcript.body.messages.map((m) => m.text), ['across nodes']);

    // A media state is relayed, and a later joiner on a third node sees it.
    assert.equal((await h.ack(p, 'media-state', { audio: false, video: true, screen: false })).ok, true);
    assert.equal((await h.nextEvent(d, 'media-state')).audio, false);
    const three = await clusterNode('room-three');
    const admin = await h.connect(three, (await h.user(three, 'admin')).token);
    const aJoin = await h.ack(admin, 'join-room', { appointmentId: appt.id });
    assert.deepEqual(aJoin.peers.map((x) => x.socketId), [p.id, d.id]);
    assert.equal(aJoin.peers[0].media.audio, false);
    // The third member relays the room: everyone is told, wherever connected.
    for (const s of [p, d, admin]) assert.equal((await h.nextEvent(s, 'relay-activated', 5000)).reason, 'room-size');

    // Every node lists the room with its three members.
    const adminToken = (await h.user(one, 'admin')).token;
    for (const server of [one, two, three]) {
      const rooms = await h.api(server, 'GET', '/api/admin/rooms', { token: adminToken });
      const room = rooms.body.rooms.find((r) => r.appointmentId === appt.id);
      assert.deepEqual(room.participants.map((x) => x.socketId), [p.id, d.id, admin.id]);
    }

    // Leaving is seen on the other nodes; the room is gone once empty.
    assert.deepEqual(await h.ack(p, 'leave-room', {}), { ok: true });
    for (const s of [d, admin]) assert.equal((await h.nextEvent(s, 'peer-left')).socketId, p.id);
    h.closeSocket(d);
    assert.equal((await h.nextEvent(admin, 'peer-left', 5000)).reason, 'disconnected');
    assert.deepEqual(await h.ack(admin, 'leave-room', {}), { ok: true });
    const after = await h.api(two, 'GET', '/api/admin/rooms', { token: adminToken });
    assert.equal(after.body.rooms.find((r) => r.appointmentId === appt.id), undefined);
  });

  test('a doctor on one node admits a patient waiting on another', T, async (t) => {
    if (skipWithout(t)) return;
    const waitingRoom = { CALLRELAY_CONSULT__WAITING_ROOM: 'true' };
    const [one, two] = [await clusterNode('lobby-one', waitingRoom), await clusterNode('lobby-two', waitingRoom)];
    const { patient, doctor, appt } = await patientAndDoctor(one);
    const d = await h.connect(one, doctor.token);
    assert.equal((await h.ack(d, 'join-room', { appointmentId: appt.id })).ok, true);
    const p = await h.connect(two, patient.token);
    const wait = await h.ack(p, 'join-room', { appointmentId: appt.id });
    assert.equal(wait.waiting, true);
    const lobby = await h.nextEvent(d, 'waiting-room');
    assert.deepEqual(lobby.waiting.map((w) => w.socketId), [p.id]);

    // A doctor's page opened later, on the other node, sees who waits at once.
    const d2 = await h.connect(two, doctor.token);
    assert.deepEqual((await h.nextEvent(d2, 'waiting-room')).waiting.map((w) => w.userId), [patient.id]);

    const admitted = await h.ack(d, 'admit', { appointmentId: appt.id, userId: patient.id });
    assert.deepEqual(admitted, { ok: true, admitted: 1 });
    const entered = await h.nextEvent(p, 'admitted');
    assert.deepEqual(entered.peers.map((x) => x.socketId), [d.id]);
    assert.equal((await h.nextEvent(d, 'peer-joined')).socketId, p.id);
    assert.deepEqual((await h.nextEvent(d, 'waiting-room')).waiting, []);
    // In the room now: chat works from the other node.
    assert.equal((await h.ack(p, 'chat-message', { text: 'hello doctor' })).ok, true);
    assert.equal((await h.nextEvent(d, 'chat-message')).text, 'hello doctor');
  });

  test('the members of a node that dies leave their rooms within its lease', T, async (t) => {
    if (skipWithout(t)) return;
    const [one, doomed] = [await clusterNode('survivor'), await clusterNode('doomed')];
    const { patient, doctor, appt } = await patientAndDoctor(one);
    const d = await h.connect(one, doctor.token);
    assert.equal((await h.ack(d, 'join-room', { appointmentId: appt.id })).ok, true);
    const p = await h.connect(doomed, patient.token, { reconnection: false });
    assert.equal((await h.ack(p, 'join-room', { appointmentId: appt.id })).ok, true);
    await h.nextEvent(d, 'peer-joined');

    const pId = p.id;
    const killedAt = Date.now();
    await doomed.stop('SIGKILL');
    const left = await h.nextEvent(d, 'peer-left', 15000);
    assert.deepEqual([left.socketId, left.reason], [pId, 'disconnected']);
    const secs = (Date.now() - killedAt) / 1000;
    assert.ok(secs <= 10, `peer-left ${secs} s after the kill`);

    // The patient comes back through the surviving node, naming its old socket.
    const back = await h.connect(one, patient.token);
    const rejoin = await h.ack(back, 'join-room', { appointmentId: appt.id, previousSocketId: pId });
    assert.deepEqual(rejoin.peers.map((x) => x.socketId), [d.id]);
    const again = await h.nextEvent(d, 'peer-joined');
    assert.deepEqual([again.socketId, again.replaces], [back.id, pId]);
  });


  test('a direct call across nodes: every device rings, one answers elsewhere, busy, no-answer', T, async (t) => {
    if (skipWithout(t)) return;
    const ring = { CALLRELAY_CALLS__RING_TIMEOUT_SECS: '2' };
    const [one, two, three] = [
      await clusterNode('call-one', ring), await clusterNode('call-two', ring), await clusterNode('call-three', ring),
    ];
    const { patient, doctor } = await patientAndDoctor(one);
    const offer = { type: 'offer', sdp: h.sdp('offer') };
    const answer = { type: 'answer', sdp: h.sdp('answer') };
    const sd = await h.connect(one, doctor.token);
    const p2 = await h.connect(two, patient.token);
    const p3 = await h.connect(three, patient.token);

    const placed = await h.ack(sd, 'call-user', { to: patient.id, callType: 'video', offer });
    assert.equal(placed.ok, true, JSON.stringify(placed));
    const { callId } = placed;
    for (const p of [p2, p3]) assert.equal((await h.nextEvent(p, 'incoming-call')).callId, callId);
    const c1 = h.candidate(1);
    assert.deepEqual(await h.ack(sd, 'ice-candidate', { callId, candidate: c1 }), { ok: true });
    for (const p of [p2, p3]) assert.deepEqual(await h.nextEvent(p, 'ice-candidate'), { callId, candidate: c1 });

    // The device on node three answers first; node two's stops ringing; a late answer conflicts.
    assert.deepEqual(await h.ack(p3, 'answer-call', { callId, answer }), { ok: true });
    assert.deepEqual(await h.nextEvent(sd, 'call-answered'), { callId, answer });
    assert.deepEqual(await h.nextEvent(p2, 'call-answered-elsewhere'), { callId });
    assert.equal((await h.ack(p2, 'answer-call', { callId, answer })).error.code, 'conflict');

    // Both are busy to a caller on any node.
    const staff = await h.user(two, 'staff');
    const ss = await h.connect(two, staff.token);
    assert.equal((await h.ack(ss, 'call-user', { to: patient.id, callType: 'audio', offer })).error.code, 'busy');
    assert.equal((await h.ack(ss, 'call-user', { to: doctor.id, callType: 'audio', offer })).error.code, 'busy');

    // Hang-up from node one reaches node three.
    assert.deepEqual(await h.ack(sd, 'end-call', { callId }), { ok: true });
    assert.deepEqual(await h.nextEvent(p3, 'call-ended'), { callId, reason: 'hangup' });

    // Nobody answers: no-answer for both sides, whichever node rings.
    const unanswered = await h.ack(ss, 'call-user', { to: patient.id, callType: 'audio', offer });
    assert.equal(unanswered.ok, true, JSON.stringify(unanswered));
    assert.deepEqual(await h.nextEvent(ss, 'call-ended', 6000), { callId: unanswered.callId, reason: 'no-answer' });
    assert.deepEqual(await h.nextEvent(p2, 'call-ended', 2000), { callId: unanswered.callId, reason: 'no-answer' });
    const calls = await h.api(three, 'GET', '/api/calls', { token: patient.token });
    const statuses = Object.fromEntries(calls.body.calls.map((c) => [c.callId, c.status]));
    assert.equal(statuses[callId], 'ended');
    assert.equal(statuses[unanswered.callId], 'missed');

    // A user connected only to another node is online; one connected nowhere is offline.
    const nobody = await h.user(one, 'patient');
    assert.equal((await h.ack(ss, 'call-user', { to: nobody.id, callType: 'audio', offer })).error.code, 'offline');
  });

  test('a call whose caller is on a node that dies ends for the callee', T, async (t) => {
    if (skipWithout(t)) return;
    const [one, doomed] = [await clusterNode('calls-survivor'), await clusterNode('calls-doomed')];
    const { patient, doctor } = await patientAndDoctor(one);
    const sd = await h.connect(doomed, doctor.token, { reconnection: false });
    const sp = await h.connect(one, patient.token);
    const { callId } = await h.ack(sd, 'call-user', { to: patient.id, callType: 'video', offer: { type: 'offer', sdp: h.sdp('offer') } });
    await h.nextEvent(sp, 'incoming-call');
    assert.deepEqual(await h.ack(sp, 'answer-call', { callId, answer: { type: 'answer', sdp: h.sdp('answer') } }), { ok: true });
    await doomed.stop('SIGKILL');
    assert.deepEqual(await h.nextEvent(sp, 'call-ended', 15000), { callId, reason: 'disconnected' });
    // The patient is free again.
    const staff = await h.connect(one, (await h.user(one, 'staff')).token);
    assert.equal((await h.ack(staff, 'call-user', { to: patient.id, callType: 'audio', offer: { type: 'offer', sdp: h.sdp('offer') } })).ok, true);
  });

  test('in Chromium, a consultation whose media node dies shows both videos again', { timeout: 120000 }, async (t) => {
    if (skipWithout(t)) return;
    if (!existsSync(CHROMIUM)) {
      if (process.env.CI) assert.fail(`the Chromium failover test cannot run in CI: no ${CHROMIUM}`);
      console.log(`\n*** SKIPPED the Chromium failover test: no ${CHROMIUM} ***\n`);
      t.skip('no Chromium');
      return;
    }
    const env = { CALLRELAY_SERVER__WEB_DIR: WEB_DIR, CALLRELAY_MEDIA__MODE: 'sfu-only' };
    // Rooms go to the least loaded node, ties by id: "a-media" (holding no signaling) gets it.
    const media = await clusterNode('a-media', env);
    const [docNode, patNode] = [await clusterNode('web-doctor', env), await clusterNode('web-patient', env)];
    const { patient, doctor, appt } = await patientAndDoctor(docNode);
    const { chromium } = await import('playwright-core');
    const browser = await launchChromium(chromium, docNode.base);
    try {
      const pages = {};
      for (const [who, u, node] of [['doctor', doctor, docNode], ['patient', patient, patNode]]) {
        const context = await browser.newContext({ viewport: { width: 800, height: 600 } });
        await context.grantPermissions(['camera', 'microphone'], { origin: node.base });
        await context.addInitScript((token) => sessionStorage.setItem('callrelay.token', token), u.token);
        await context.addInitScript(keepPeerConnections);
        const page = await context.newPage();
        await page.goto(`${node.base}/consult/${appt.id}`);
        await join(page);
        pages[who] = page;
      }
      // In the page: video frames decoded on the connections made from index `from` on.
      const decoded = (from) => Promise.all(Object.values(pages).map((p) => p.evaluate(async (i) => {
        let frames = 0;
        for (const pc of window.__pcs.slice(i)) {
          (await pc.getStats()).forEach((r) => {
            if (r.type === 'inbound-rtp' && r.kind === 'video') frames += r.framesDecoded || 0;
          });
        }
        return frames;
      }, from)));
      const pcCounts = () => Promise.all(Object.values(pages).map((p) => p.evaluate(() => window.__pcs.length)));
      async function bothDecoding(from, ms, what) {
        const deadline = Date.now() + ms;
        let before = null;
        for (;;) {
          const now = await Promise.all(Object.values(pages).map((p, i) => decoded(from[i]).then((d) => d[i])));
          if (before && now.every((n, i) => n > before[i] + 5)) return;
          before = now;
          assert.ok(Date.now() < deadline, `${what}: video frames decoded (doctor, patient): ${now}`);
          await h.sleep(1000);
        }
      }
      await bothDecoding([0, 0], 30000, 'before the kill');
      const admin = await h.user(docNode, 'admin');
      const nodes = (await h.api(docNode, 'GET', '/api/admin/cluster', { token: admin.token })).body.nodes;
      assert.equal(nodes.find((n) => n.id === 'a-media')?.rooms, 1, `the room's node: ${JSON.stringify(nodes)}`);

      const before = await pcCounts();
      const killedAt = Date.now();
      await media.stop('SIGKILL');
      // Both browsers make new relay connections by themselves and decode on them.
      await bothDecoding(before, 30000, 'after the media node died');
      const secs = (Date.now() - killedAt) / 1000;
      console.log(`# Chromium: both sides decode video again ${secs.toFixed(1)} s after the media node died`);
      assert.ok(secs <= 30, `${secs} s`);
    } finally {
      await browser.close();
    }
  });

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
