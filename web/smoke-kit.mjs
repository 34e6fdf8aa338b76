// What the browser smoke scripts (smoke.mjs, smoke-relay3.mjs) share: their command-line
// options, playwright-core, the HTTP API, and headless Chromium with a fake camera.

import { createRequire } from 'node:module';

/** `opt(name, fallback)` takes `name VALUE` out of `args` (the rest stays positional). */
export function options(args) {
  return (name, fallback) => {
    const i = args.indexOf(name);
    if (i === -1) return fallback;
    const value = args[i + 1];
    args.splice(i, 2);
    return value;
  };
}

export async function loadPlaywright() {
  try {
    return await import('playwright-core');
  } catch {
    // Plain require() honours NODE_PATH, so the package can live outside the repository.
    return createRequire(import.meta.url)('playwright-core');
  }
}

/** `http(method, url, token, body)` against the server at `base`: the JSON answer, or throws. */
export function httpClient(base) {
  return async (method, url, token, body) => {
    const res = await fetch(base + url, {
      method,
      headers: {
        'content-type': 'application/json',
        ...(token ? { authorization: `Bearer ${token}` } : {}),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    const data = text ? JSON.parse(text) : null;
    if (!res.ok) throw new Error(`${method} ${url}: HTTP ${res.status} ${text}`);
    return data;
  };
}

/**
 * Headless Chromium (`executable`, else CHROMIUM, else /usr/bin/chromium) with fake camera and
 * microphone; `fakeDevice` is the fake camera's setting (e.g. `fps=30`; without, it runs at 20 fps).
 */
export function launchChromium(chromium, base, { executable, fakeDevice } = {}) {
  return chromium.launch({
    executablePath: executable || process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    chromiumSandbox: false,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--use-fake-ui-for-media-stream',
      fakeDevice ? `--use-fake-device-for-media-stream=${fakeDevice}` : '--use-fake-device-for-media-stream',
      '--allow-loopback-in-peer-connection',
      '--autoplay-policy=no-user-gesture-required',
      // A server reached on another address than loopback (a browser in a network namespace)
      // is plain http: let the page use the camera anyway (tests only; deployments use HTTPS).
      ...(/^http:\/\/(127\.0\.0\.1|localhost)[:/]/.test(base + '/')
        ? []
        : [`--unsafely-treat-insecure-origin-as-secure=${base}`]),
    ],
  });
}

/**
 * A walk that goes on after a failed step: `fail(text)` records and logs a failure,
 * `expectSoon(what, fn)` waits for `fn` (a locator action or check) and records `what` as
 * failed if it never comes; `failures` is the list to report at the end.
 */
export function failureLog(log) {
  const failures = [];
  const fail = (text) => {
    failures.push(text);
    log(`FAIL ${text}`);
  };
  async function expectSoon(what, fn) {
    try {
      await fn();
      return true;
    } catch (err) {
      fail(`${what} (${String(err.message || err).split('\n')[0]})`);
      return false;
    }
  }
  return { failures, fail, expectSoon };
}

/**
 * An init script (for `context.addInitScript`) keeping every RTCPeerConnection of the page in
 * `window.__pcs` and noting what each goes through in `window.__pcTrace`: its states, the
 * descriptions set (type, and whether the ICE credentials changed), candidates added, its
 * transport once connected, close. A failed run prints the notes (`printPeerConnectionTraces`):
 * what the page's relay or direct connections did is where a failure's cause shows.
 */
export function keepPeerConnections() {
  const Native = window.RTCPeerConnection;
  window.__pcs = [];
  const trace = [];
  window.__pcTrace = trace;
  const ufragOf = (d) => ((d && d.sdp) || '').match(/a=ice-ufrag:(\S+)/)?.[1];
  window.RTCPeerConnection = function (...a) {
    const pc = new Native(...a);
    window.__pcs.push(pc);
    const n = window.__pcs.length;
    const note = (what) => {
      if (trace.length < 3000) trace.push(`${new Date().toISOString().slice(11, 23)} pc${n} ${what}`);
    };
    const selected = () => pc.getStats().then((stats) => {
      let pair = null;
      stats.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
      const local = pair && stats.get(pair.localCandidateId);
      return local ? `${local.protocol} ${local.candidateType}` : 'no pair';
    }).catch(() => '?');
    pc.addEventListener('iceconnectionstatechange', () => {
      const state = pc.iceConnectionState;
      if (state === 'connected' || state === 'completed') selected().then((p) => note(`ice ${state} over ${p}`));
      else note(`ice ${state}`);
    });
    pc.addEventListener('connectionstatechange', () => note(`connection ${pc.connectionState}`));
    pc.addEventListener('signalingstatechange', () => note(`signaling ${pc.signalingState}`));
    pc.addEventListener('track', (e) => note(`track ${e.track.kind}`));
    for (const [method, current] of [['setLocalDescription', 'localDescription'], ['setRemoteDescription', 'remoteDescription']]) {
      const native = pc[method].bind(pc);
      pc[method] = (d, ...rest) => {
        const before = ufragOf(pc[current]);
        return native(d, ...rest).then((r) => {
          const after = ufragOf(pc[current]);
          const restarted = before && after && before !== after ? ' (new ICE credentials)' : '';
          note(`${method} ${pc[current] ? pc[current].type : '?'}${restarted}`);
          return r;
        }, (err) => {
          note(`${method} failed: ${err.message}`);
          throw err;
        });
      };
    }
    const addIceCandidate = pc.addIceCandidate.bind(pc);
    pc.addIceCandidate = (c, ...rest) => {
      const proto = (((c && c.candidate) || '').split(' ')[2] || 'end').toLowerCase();
      return addIceCandidate(c, ...rest).then((r) => { note(`remote candidate ${proto}`); return r; },
        (err) => { note(`remote candidate ${proto} failed: ${err.message}`); throw err; });
    };
    const restartIce = pc.restartIce.bind(pc);
    pc.restartIce = () => { note('restartIce'); return restartIce(); };
    const close = pc.close.bind(pc);
    pc.close = () => { note('close'); return close(); };
    note('created');
    return pc;
  };
  window.RTCPeerConnection.prototype = Native.prototype;
}

/** Prints each page's `keepPeerConnections` notes. */
export async function printPeerConnectionTraces(pages, log) {
  for (const [who, page] of Object.entries(pages)) {
    const trace = await page.evaluate(() => window.__pcTrace || []).catch((err) => [`(not read: ${err.message})`]);
    log(`${who}'s peer connections:\n    ${trace.join('\n    ')}`);
  }
}

/**
 * Opens `url` in `page` and waits for `ready` (a locator) to show; loads it once more when it
 * does not within 10 s. A browser just moved into a network namespace may see its network
 * change while the page loads (net::ERR_NETWORK_CHANGED) and miss a script: that is the test
 * machine's doing, not the app's.
 */
export async function openPage(page, url, ready, log = () => {}) {
  await page.goto(url);
  try {
    await ready.waitFor({ timeout: 10000 });
  } catch {
    log(`${url} did not finish loading; loading it again`);
    await page.goto(url);
    await ready.waitFor();
  }
}

/** Clicks "Join consultation" on a consult page once it can; returns when it was clicked. */
export async function join(page) {
  const button = page.getByRole('button', { name: 'Join consultation' });
  await button.waitFor();
  await page.waitForFunction(() => !document.querySelector('.lobby button.primary').disabled);
  const clicked = Date.now();
  await button.click();
  await page.locator('.grid').waitFor();
  return clicked;
}

/** A dev token for each of `people` ({who: {sub, name, role}}), by the same keys. */
export async function devTokens(http, people) {
  const tokens = {};
  for (const [who, p] of Object.entries(people)) tokens[who] = (await http('POST', '/api/dev/token', null, p)).token;
  return tokens;
}

/** An appointment of `people.patient` with `people.doctor` in 15 minutes, made by the doctor
 * (`confirm`: and confirmed). Returns it as created. */
export async function appointment(http, tokens, people, { confirm = true } = {}) {
  const created = await http('POST', '/api/appointments', tokens.doctor, {
    patientId: people.patient.sub,
    doctorId: people.doctor.sub,
    scheduledAt: new Date(Date.now() + 15 * 60 * 1000).toISOString(),
    patientName: people.patient.name,
    doctorName: people.doctor.name,
  });
  if (confirm) await http('POST', `/api/appointments/${created.id}/confirm`, tokens.doctor);
  return created;
}
