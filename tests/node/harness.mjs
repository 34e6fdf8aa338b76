// Shared helpers for the socket.io-client suite: runs the real `callrelay` binary (CALLRELAY_BIN)
// on free ports with a throw-away database, hands out tokens, appointments and connected sockets,
// and records every event a socket receives so tests can wait for (or rule out) one without races.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import dgram from 'node:dgram';
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { io } from 'socket.io-client';

export { sleep };

export const SECRET = 'node-suite-secret-0123456789abcdef';
export const ACK_MS = 5000;

const BIN = process.env.CALLRELAY_BIN;
if (!BIN) {
  throw new Error('CALLRELAY_BIN must name the callrelay binary (cargo build -p callrelay)');
}

/** The PostgreSQL database handed to the suite, if any. */
export const PG_URL = process.env.CALLRELAY_NODE_PG_URL || '';

const servers = new Set();
const sockets = new Set();

// Last resort: never leave a server behind, whatever happened to the test.
process.on('exit', () => {
  for (const s of servers) {
    try {
      s.child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
});

/** A TCP port nobody listens on right now (released just before the server binds it). */
export function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket('udp4');
    sock.on('error', reject);
    sock.bind(0, '127.0.0.1', () => {
      const { port } = sock.address();
      sock.close(() => resolve(port));
    });
  });
}

/** Whether nobody listens on TCP `port` (all interfaces) right now. */
function tcpPortFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, '0.0.0.0', () => srv.close(() => resolve(true)));
  });
}

/**
 * A port free for UDP and for TCP: the SFU serves ICE-TCP on its UDP port's number and refuses
 * to start when that TCP port is taken (an outgoing connection's ephemeral port can be).
 */
export async function freeMediaPort() {
  for (let attempt = 0; attempt < 50; attempt += 1) {
    const port = await freeUdpPort();
    if (await tcpPortFree(port)) return port;
  }
  throw new Error('no port free for both UDP and TCP after 50 tries');
}

/** A unique id with a readable prefix, so tests sharing a server never share users. */
export function uid(prefix) {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

/** A fresh SQLite database in a temporary folder: {url, dispose()}. */
export function tempSqlite() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'callrelay-node-'));
  return {
    url: `sqlite://${path.join(dir, 'callrelay.db')}?mode=rwc`,
    dispose: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/**
 * Starts the binary and waits for GET /livez.
 * opts.env: extra CALLRELAY_* settings; opts.dbUrl: use this database (else a temp SQLite one,
 * removed when the server is stopped).
 */
export async function startServer({ env = {}, dbUrl } = {}) {
  let db = null;
  if (!dbUrl) {
    db = tempSqlite();
    dbUrl = db.url;
  }
  const port = await freeTcpPort();
  const childEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('CALLRELAY_')) childEnv[k] = v;
  }
  Object.assign(childEnv, {
    CALLRELAY_SERVER__BIND: `127.0.0.1:${port}`,
    CALLRELAY_DATABASE__URL: dbUrl,
    CALLRELAY_AUTH__JWT_SECRET: SECRET,
    CALLRELAY_SERVER__WEB_DIR: '',
    CALLRELAY_MEDIA__UDP_PORT: String(await freeMediaPort()),
    // SIGTERM ends what is left at once (the suites stop servers mid-call); a test of the
    // drain sets its own timeout.
    CALLRELAY_SERVER__DRAIN_TIMEOUT_SECS: '0',
    // Patients enter rooms at once; the waiting room's own tests turn it on.
    CALLRELAY_CONSULT__WAITING_ROOM: 'false',
    RUST_LOG: process.env.RUST_LOG || 'warn',
    ...env,
  });
  const child = spawn(BIN, [], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const keep = (chunk) => {
    log = (log + chunk.toString()).slice(-20000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }));
  });
  // A server that dies on its own makes every later request fail with ECONNREFUSED: say why.
  child.on('exit', (code, signal) => {
    if (!server.stopped && servers.has(server)) {
      console.error(`\n*** callrelay on ${server.base} exited unexpectedly (code ${code}, signal ${signal}); its log:\n${log}\n***`);
    }
  });
  const server = {
    base: `http://127.0.0.1:${port}`,
    dbUrl,
    child,
    exited,
    get log() {
      return log;
    },
    stopped: false,
    /** Sends `sig` without waiting for the exit (then `stop()` waits for it, sending nothing). */
    kill(sig = 'SIGTERM') {
      server.stopped = true;
      if (child.exitCode === null && child.signalCode === null) child.kill(sig);
    },
    /** Sends `signal` and waits for the exit: {code, signal}. Removes a temp database. */
    async stop(sig = 'SIGTERM', ms = 15000) {
      if (!server.stopped) {
        server.stopped = true;
        if (child.exitCode === null && child.signalCode === null) child.kill(sig);
      }
      const result = await Promise.race([exited, sleep(ms, null, { ref: false })]);
      if (result === null) {
        child.kill('SIGKILL');
        await exited;
      }
      servers.delete(server);
      if (db) db.dispose();
      if (result === null) throw new Error(`server did not exit within ${ms} ms after ${sig}`);
      return result;
    },
  };
  servers.add(server);
  const deadline = Date.now() + 20000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      servers.delete(server);
      if (db) db.dispose();
      throw new Error(`callrelay exited during start-up (${child.exitCode ?? child.signalCode}):\n${log}`);
    }
    try {
      const res = await fetch(`${server.base}/livez`, { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) break;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) {
      await server.stop('SIGKILL').catch(() => {});
      throw new Error(`callrelay did not answer /livez within 20 s:\n${log}`);
    }
    await sleep(50);
  }
  return server;
}

/** HTTP call: {status, body} (body parsed as JSON when it is JSON). */
export async function api(server, method, urlPath, { token, body } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${server.base}${urlPath}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(ACK_MS),
  });
  const text = await res.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.status, body: parsed };
}

/** A token from POST /api/dev/token. */
export async function token(server, sub, name, role) {
  const res = await api(server, 'POST', '/api/dev/token', { body: { sub, name, role } });
  if (res.status !== 200 || typeof res.body?.token !== 'string') {
    throw new Error(`dev token for ${sub}: ${res.status} ${JSON.stringify(res.body)}`);
  }
  return res.body.token;
}

/** A user {id, name, role, token} with a unique id. */
export async function user(server, role, name = `${role} ${Math.random().toString(36).slice(2, 6)}`) {
  const id = uid(role);
  return { id, name, role, token: await token(server, id, name, role) };
}

const b64url = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

/** An HS256 JWT signed here (for expired / foreign-secret / alg none tokens). */
export function signJwt(claims, { secret = SECRET, alg = 'HS256' } = {}) {
  const head = `${b64url({ alg, typ: 'JWT' })}.${b64url(claims)}`;
  if (alg === 'none') return `${head}.`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

/**
 * Creates an appointment between `patient` and `doctor` (as the doctor) and, unless
 * `confirm: false`, confirms it. Returns the appointment.
 */
export async function appointment(server, patient, doctor, { confirm = true } = {}) {
  const created = await api(server, 'POST', '/api/appointments', {
    token: doctor.token,
    body: {
      patientId: patient.id,
      doctorId: doctor.id,
      scheduledAt: new Date(Date.now() + 3600_000).toISOString(),
      patientName: patient.name,
      doctorName: doctor.name,
    },
  });
  if (created.status !== 201 || created.body?.status !== 'pending') {
    throw new Error(`create appointment: ${created.status} ${JSON.stringify(created.body)}`);
  }
  if (!confirm) return created.body;
  const confirmed = await api(server, 'POST', `/api/appointments/${created.body.id}/confirm`, {
    token: doctor.token,
  });
  if (confirmed.status !== 200 || confirmed.body?.status !== 'confirmed') {
    throw new Error(`confirm appointment: ${confirmed.status} ${JSON.stringify(confirmed.body)}`);
  }
  return confirmed.body;
}

/** Makes a socket (not yet connected) that records everything it receives. */
function makeSocket(server, authToken, opts = {}) {
  const socket = io(server.base, {
    auth: authToken === undefined ? undefined : { token: authToken },
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
    timeout: ACK_MS,
    autoConnect: false,
    ...opts,
  });
  socket.inbox = [];
  socket.waiters = [];
  socket.onAny((event, ...args) => {
    const entry = { event, args, at: Date.now() };
    const i = socket.waiters.findIndex((w) => w.event === event);
    if (i >= 0) {
      const [w] = socket.waiters.splice(i, 1);
      w.resolve(entry);
    } else {
      socket.inbox.push(entry);
    }
  });
  sockets.add(socket);
  return socket;
}

/** A recording socket, not yet connected (call .connect()); for tests of the connect itself. */
export function socket(server, authToken, opts = {}) {
  return makeSocket(server, authToken, opts);
}

/**
 * Waits until the server acknowledges events on `socket`: a no-op `leave-room` is retried until
 * acked. (The server registers its event handlers only after its connect handler has stored the
 * user, so an event sent at once after `connect` may be lost; the "emitted on connect" test
 * covers that. Here it must not turn every other test into a timeout.)
 */
export async function handlersReady(socket) {
  const deadline = Date.now() + ACK_MS;
  for (;;) {
    try {
      await socket.timeout(100).emitWithAck('leave-room', {});
      return;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`no ack from the server on a connected socket: ${err.message}`);
    }
  }
}

/**
 * A connected socket for `authToken` (websocket only unless opts.transports says otherwise),
 * ready for events.
 */
export async function connect(server, authToken, opts = {}) {
  const socket = makeSocket(server, authToken, opts);
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('connect timed out')), ACK_MS);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.once('connect_error', (err) => {
      clearTimeout(timer);
      reject(new Error(`connect_error: ${err.message}`));
    });
    socket.connect();
  });
  await handlersReady(socket);
  return socket;
}

/** Tries to connect and returns the connect_error (fails if the connection is accepted). */
export async function connectError(server, authToken, opts = {}) {
  const socket = makeSocket(server, authToken, opts);
  try {
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no connect_error within the timeout')), ACK_MS);
      socket.once('connect', () => {
        clearTimeout(timer);
        reject(new Error('the connection was accepted'));
      });
      socket.once('connect_error', (err) => {
        clearTimeout(timer);
        resolve(err);
      });
      socket.connect();
    });
  } finally {
    socket.close();
    sockets.delete(socket);
  }
}

/** The first payload of the next `name` event not yet taken (waits up to `ms`). */
export async function nextEvent(socket, name, ms = 3000) {
  const entry = await nextEntry(socket, name, ms);
  return entry.args[0];
}

/** Like nextEvent, but the whole record {event, args, at}. */
function nextEntry(socket, name, ms = 3000) {
  const i = socket.inbox.findIndex((e) => e.event === name);
  if (i >= 0) return Promise.resolve(socket.inbox.splice(i, 1)[0]);
  return new Promise((resolve, reject) => {
    const waiter = {
      event: name,
      resolve: (entry) => {
        clearTimeout(timer);
        resolve(entry);
      },
    };
    const timer = setTimeout(() => {
      socket.waiters.splice(socket.waiters.indexOf(waiter), 1);
      reject(new Error(`no '${name}' event within ${ms} ms on socket ${socket.id ?? '(unconnected)'}; got: ${
        JSON.stringify(socket.inbox.map((e) => e.event))}`));
    }, ms);
    socket.waiters.push(waiter);
  });
}

/** Asserts that no (untaken) `name` event arrives within `ms`. */
export async function noEvent(socket, name, ms = 300) {
  await sleep(ms);
  const got = socket.inbox.filter((e) => e.event === name);
  if (got.length > 0) {
    throw new Error(`unexpected '${name}' event(s): ${JSON.stringify(got.map((e) => e.args))}`);
  }
}

/** Emits with an acknowledgement, bounded by ACK_MS. */
export function ack(socket, event, ...args) {
  return socket.timeout(ACK_MS).emitWithAck(event, ...args);
}

export function closeSocket(socket) {
  socket.close();
  sockets.delete(socket);
}

export function closeSockets() {
  for (const s of sockets) s.close();
  sockets.clear();
}

/** Closes every socket and stops every server this file started. */
export async function cleanup() {
  closeSockets();
  await Promise.all([...servers].map((s) => s.stop('SIGTERM').catch(() => s.stop('SIGKILL'))));
}

/** A minimal SDP as a browser would put in an offer or answer. */
export function sdp(kind = 'offer', extra = '') {
  return [
    'v=0',
    `o=- ${Math.floor(Math.random() * 1e9)} 2 IN IP4 127.0.0.1`,
    's=-',
    't=0 0',
    'a=group:BUNDLE 0',
    'm=audio 9 UDP/TLS/RTP/SAVPF 111',
    'c=IN IP4 0.0.0.0',
    'a=mid:0',
    `a=setup:${kind === 'offer' ? 'actpass' : 'active'}`,
    'a=rtpmap:111 opus/48000/2',
    extra,
  ].join('\r\n') + '\r\n';
}

export function candidate(n = 1) {
  return {
    candidate: `candidate:${n} 1 udp 2122260223 192.168.1.${n % 250} ${50000 + n} typ host generation 0`,
    sdpMid: '0',
    sdpMLineIndex: 0,
    usernameFragment: 'abcd',
  };
}

export const RFC3339_MS_UTC = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

/** The webhook secret of the suite's servers that deliver webhooks. */
export const HOOK_SECRET = 'webhook-secret-for-the-node-suite';

/** A webhook receiver on `port` (webhooks signed with HOOK_SECRET): answers 503 to the first
 * `refuse` requests, then 200, each after `delayMs`. */
export function webhookReceiver(port, { refuse = 0, delayMs = 0 } = {}) {
  const requests = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => {
      body += c;
    });
    req.on('end', () => {
      const accepted = requests.length >= refuse;
      requests.push({ headers: req.headers, body, accepted });
      setTimeout(() => res.writeHead(accepted ? 200 : 503).end(), delayMs);
    });
  });
  return new Promise((resolve) => {
    server.listen(port, '127.0.0.1', () => resolve({
      requests,
      /** Accepted events in delivery order, each checked for its signature. */
      delivered() {
        return requests.filter((r) => r.accepted).map((r) => {
          const expected = `sha256=${createHmac('sha256', HOOK_SECRET).update(r.body).digest('hex')}`;
          assert.equal(r.headers['x-callrelay-signature'], expected, 'signed with the secret over the raw body');
          const event = JSON.parse(r.body);
          assert.equal(r.headers['x-callrelay-event'], event.event);
          return event;
        });
      },
      close: () => new Promise((done) => server.close(done)),
    }));
  });
}
