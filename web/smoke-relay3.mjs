#!/usr/bin/env node
// Three browsers in one consult room, in headless Chromium (fake cameras), through the relay.
//
//   node web/smoke-relay3.mjs BASE_URL [--rounds N] [--out DIR]
//
// A doctor and a patient join (peer-to-peer first, or relayed at once under media.mode =
// sfu-only); an admin joins as the third member, which relays the room; then the admin leaves
// and joins the relayed room again, N rounds in all (default 10). After every join each of
// the three must show two remote videos playing (videoWidth > 0 and currentTime advancing)
// over the relay. Prints the time from the admin's click on "Join consultation" to both of
// its remote videos playing, per round and as min/median/max.
//
// Then simulcast (issue 12): every browser's publish connection to the relay offers its camera
// in simulcast layers (`a=simulcast:send`; the direct connections before the relay did not),
// and the server has counted `sfu-video-size` hints the browsers sent for their remote tiles.
//
// Needs playwright-core and Chromium, like web/smoke.mjs (which explains the set-up).

import { mkdirSync } from 'node:fs';
import path from 'node:path';

import {
  appointment, devTokens, httpClient, join, keepPeerConnections, launchChromium, loadPlaywright, options,
} from './smoke-kit.mjs';

const args = process.argv.slice(2);
const opt = options(args);
const rounds = Number(opt('--rounds', '10'));
const outDir = opt('--out', '/tmp');
const base = (args[0] || 'http://127.0.0.1:3999').replace(/\/$/, '');

const log = (...m) => console.log(`[relay3 ${new Date().toISOString().slice(11, 23)}]`, ...m);

const http = httpClient(base);

const run = Math.random().toString(36).slice(2, 8);
const people = {
  doctor: { sub: `doc-${run}`, name: 'Dr Ada Lovelace', role: 'doctor' },
  patient: { sub: `pat-${run}`, name: 'Pat Smith', role: 'patient' },
  admin: { sub: `adm-${run}`, name: 'Ann Admin', role: 'admin' },
};

/** In the page: each remote tile's {socketId, width, time}. */
function remoteVideos() {
  return [...document.querySelectorAll('.tile:not(.tile-local)')].map((tile) => {
    const v = tile.querySelector('video');
    return { socketId: tile.dataset.socketId, width: v ? v.videoWidth : 0, time: v ? v.currentTime : 0 };
  });
}

/**
 * Waits until `page` shows exactly `n` remote videos, each with a picture and advancing time,
 * over the relay (path badge "relay"). Returns the ms it took.
 */
async function waitPlaying(page, n, timeoutMs, who) {
  const started = Date.now();
  let last = null;
  let before = null;
  while (Date.now() - started < timeoutMs) {
    const badge = await page.locator('.path-badge').getAttribute('data-path');
    const now = await page.evaluate(remoteVideos);
    if (badge === 'relay' && now.length === n && now.every((v) => v.width > 0)) {
      if (before && now.every((v) => {
        const b = before.find((x) => x.socketId === v.socketId);
        return b && v.time > b.time;
      })) {
        return Date.now() - started;
      }
      before = now;
    } else {
      before = null;
    }
    last = { badge, videos: now };
    await new Promise((r) => setTimeout(r, 150));
  }
  const stats = await page.evaluate(inboundVideo).catch((e) => String(e));
  throw new Error(`${who}: not ${n} remote videos playing over the relay within ${timeoutMs} ms: ${JSON.stringify(last)}; inbound video: ${JSON.stringify(stats)}`);
}

/** In the page: every peer connection's inbound video (for a failure's report). */
async function inboundVideo() {
  const out = [];
  for (const pc of window.__pcs || []) {
    const stats = await pc.getStats();
    const mids = {};
    for (const t of pc.getTransceivers()) mids[t.mid] = `${t.direction}/${t.currentDirection} ${t.receiver.track.kind} ${t.receiver.track.muted ? 'muted' : 'live'}`;
    const inbound = [];
    stats.forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'video') {
        inbound.push({ mid: r.mid, packets: r.packetsReceived, frames: r.framesDecoded, keyframes: r.keyFramesDecoded, plis: r.pliCount, firs: r.firCount, nacks: r.nackCount });
      }
    });
    out.push({ state: pc.connectionState, mids, inbound });
  }
  return out;
}

/** In the page: the offers this page made, on open and closed connections (P2P ones closed
 * when the room moved to the relay), and whether each announces simulcast. */
function offersMade() {
  return (window.__pcs || [])
    .filter((pc) => pc.localDescription && pc.localDescription.type === 'offer')
    .map((pc) => ({
      open: pc.connectionState !== 'closed' && pc.signalingState !== 'closed',
      simulcast: /^a=simulcast:send /m.test(pc.localDescription.sdp),
    }));
}

/** The server's count of `sfu-video-size` hints it acknowledged. */
async function videoSizeHints() {
  const res = await fetch(`${base}/metrics`);
  const text = await res.text();
  const m = /^callrelay_signaling_events_total\{event="sfu-video-size",outcome="ok"\} (\d+)$/m.exec(text);
  return m ? Number(m[1]) : 0;
}

/** Simulcast on the relay's publish connections, never on direct ones; the hints counted. */
async function checkSimulcast(failures) {
  for (const [who, page] of Object.entries(pages)) {
    const offers = await page.evaluate(offersMade);
    const open = offers.filter((o) => o.open);
    if (open.length !== 1 || !open[0].simulcast) {
      failures.push(`${who}: the relay's publish offer does not announce simulcast: ${JSON.stringify(offers)}`);
    }
    if (offers.some((o) => !o.open && o.simulcast)) {
      failures.push(`${who}: a direct (P2P) offer announced simulcast: ${JSON.stringify(offers)}`);
    }
  }
  // The hints go 300 ms after a tile's size settles.
  let hints = 0;
  for (let i = 0; i < 20 && hints === 0; i++) {
    hints = await videoSizeHints();
    if (hints === 0) await new Promise((r) => setTimeout(r, 250));
  }
  if (hints === 0) failures.push('no sfu-video-size hint was acknowledged (callrelay_signaling_events_total{event="sfu-video-size",outcome="ok"})');
  else log(`simulcast: every publish offer announces it; ${hints} sfu-video-size hints acknowledged`);
}

const pages = {};

async function main() {
  const { chromium } = await loadPlaywright();
  mkdirSync(outDir, { recursive: true });
  const tokens = await devTokens(http, people);
  const created = await appointment(http, tokens, people);
  const room = `${base}/consult/${created.id}`;
  log(`appointment ${created.id} confirmed`);

  const browser = await launchChromium(chromium, base);
  const failures = [];
  const times = [];
  try {
    for (const who of Object.keys(people)) {
      const context = await browser.newContext({ viewport: { width: 960, height: 640 } });
      await context.grantPermissions(['camera', 'microphone'], { origin: base });
      await context.addInitScript((token) => sessionStorage.setItem('callrelay.token', token), tokens[who]);
      // Keeps every peer connection, for the stats of a failure's report.
      await context.addInitScript(keepPeerConnections);
      const page = await context.newPage();
      page.on('pageerror', (e) => {
        failures.push(`${who} page error: ${e.message}`);
        log(`${who} PAGE ERROR: ${e.message}`);
      });
      page.on('console', (m) => {
        if (m.type() === 'error') log(`${who} console.error: ${m.text()}`);
      });
      pages[who] = page;
    }
    for (const who of ['doctor', 'patient']) {
      await pages[who].goto(room);
      await join(pages[who]);
      log(`${who} joined`);
    }
    const a = pages.admin;
    for (let round = 1; round <= rounds; round++) {
      await a.goto(room);
      const clicked = await join(a);
      try {
        await waitPlaying(a, 2, 20000, 'admin');
        const ms = Date.now() - clicked;
        times.push(ms);
        log(`round ${round}: the third browser plays both remote videos ${ms} ms after its join`);
        for (const who of ['doctor', 'patient']) await waitPlaying(pages[who], 2, 15000, who);
      } catch (err) {
        failures.push(`round ${round}: ${err.message}`);
        log(`round ${round} FAILED: ${err.message}`);
        await a.screenshot({ path: path.join(outDir, `callrelay-relay3-round${round}.png`) }).catch(() => {});
        break;
      }
      if (round < rounds) {
        await a.getByRole('button', { name: 'Leave' }).click();
        await a.waitForURL(`${base}/`);
        for (const who of ['doctor', 'patient']) {
          await pages[who].waitForFunction(() => document.querySelectorAll('.tile:not(.tile-local)').length === 1, null, { timeout: 5000 });
        }
      }
    }
    if (!failures.length) await checkSimulcast(failures);
  } finally {
    await browser.close();
  }
  if (times.length) {
    const sorted = [...times].sort((x, y) => x - y);
    log(`join to both remote videos playing (third browser, ${times.length} joins): min ${sorted[0]} ms, median ${sorted[Math.floor(sorted.length / 2)]} ms, max ${sorted[sorted.length - 1]} ms`);
  }
  if (failures.length) {
    console.error(`\nRELAY3 FAILED:\n - ${failures.join('\n - ')}`);
    process.exit(1);
  }
  log(`RELAY3 OK (${rounds} joins of the third browser)`);
}

main().catch((err) => {
  console.error('RELAY3 ERROR:', err);
  process.exit(1);
});
