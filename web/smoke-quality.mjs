#!/usr/bin/env node
// Media quality of a relayed consultation (issue 12), two headless Chromiums, each its own
// browser (so each can sit on its own network, e.g. a network namespace):
//
//   node web/smoke-quality.mjs DOCTOR_BASE_URL [PATIENT_BASE_URL] [--condition-cmd CMD]
//        [--settle-ms N] [--measure-ms N] [--no-nack] [--out DIR]
//
// The doctor's browser is CHROMIUM_DOCTOR (else CHROMIUM, else /usr/bin/chromium), the
// patient's CHROMIUM_PATIENT; each reaches the server at its base URL (the same one by
// default). Both fake cameras capture 1280x720 at 30 fps (what the page asks a real camera for),
// so the relay's publish connections carry three simulcast layers. Once each sees the other's
// video over the relay, CMD runs (a shell command that degrades a network: loss, a rate
// limit), then after --settle-ms (default 10000) each side's received video is measured over
// --measure-ms (default 10000) from getStats (inbound-rtp): one line per side,
//
//   QUALITY {"who":"patient","frameWidth":..,"frameHeight":..,"framesDecoded":..,"fps":..,
//            "freezeCount":..,"totalFreezesDuration":..,"longestStallMs":..,"minFps1s":..,...}
//
// framesDecoded, freezeCount and totalFreezesDuration (s) are what the window added; fps is
// framesDecoded over the window; longestStallMs the longest time no new frame was decoded
// (sampled every 250 ms), stalledMs the time spent in stalls of 500 ms or more (getStats
// counts a freeze only once the next frame comes, so a picture still stopped at the end of the
// window is in neither freezeCount nor totalFreezesDuration); minFps1s the fewest frames decoded in any whole second of it;
// heights how many of the 250 ms samples saw each frame height.
// --no-nack strips NACK (`a=rtcp-fb:PT nack`, not `nack pli`) from every remote description
// the pages apply: neither browser asks for or answers retransmissions (the comparison "without
// RTX/NACK"). The exit status is 0 when both saw the other's video; the figures are for the
// caller (tests/browser_networks.rs) to judge.
//
// Needs playwright-core and Chromium, like web/smoke.mjs (which explains the set-up).

import { mkdirSync } from 'node:fs';
import { execSync } from 'node:child_process';
import path from 'node:path';

import {
  appointment, devTokens, httpClient, keepPeerConnections, launchChromium, loadPlaywright, openPage, options,
} from './smoke-kit.mjs';

const args = process.argv.slice(2);
const opt = options(args);
const conditionCmd = opt('--condition-cmd', null);
const settleMs = Number(opt('--settle-ms', '10000'));
const measureMs = Number(opt('--measure-ms', '10000'));
const outDir = opt('--out', '/tmp');
const noNack = args.includes('--no-nack') && args.splice(args.indexOf('--no-nack'), 1);
const bases = {
  doctor: (args[0] || 'http://127.0.0.1:3999').replace(/\/$/, ''),
  patient: (args[1] || args[0] || 'http://127.0.0.1:3999').replace(/\/$/, ''),
};
const executables = {
  doctor: process.env.CHROMIUM_DOCTOR || process.env.CHROMIUM,
  patient: process.env.CHROMIUM_PATIENT || process.env.CHROMIUM,
};

const log = (...m) => console.log(`[quality ${new Date().toISOString().slice(11, 23)}]`, ...m);

const run = Math.random().toString(36).slice(2, 8);
const people = {
  doctor: { sub: `doc-${run}`, name: 'Dr Ada Lovelace', role: 'doctor' },
  patient: { sub: `pat-${run}`, name: 'Pat Smith', role: 'patient' },
};

/** An init script: remote descriptions lose their NACK feedback lines (`nack pli` stays). */
function stripNack() {
  const apply = RTCPeerConnection.prototype.setRemoteDescription;
  RTCPeerConnection.prototype.setRemoteDescription = function (desc, ...rest) {
    if (desc && desc.sdp) desc = { type: desc.type, sdp: desc.sdp.replace(/^a=rtcp-fb:\S+ nack\r?\n/gm, '') };
    return apply.call(this, desc, ...rest);
  };
}

/** In the page: the received video (inbound-rtp of the open connections), the camera's
 * settings and the remote tile's size. */
async function snapshot() {
  let inbound = null;
  const sending = []; // this page's camera layers: rid, height, fps, why limited, target kbit/s
  let uplinkKbps = null; // the browser's estimate of its uplink to the relay
  for (const pc of window.__pcs || []) {
    if (pc.connectionState === 'closed') continue;
    const stats = await pc.getStats();
    let pairKbps = null;
    let publishes = false;
    stats.forEach((r) => {
      if (r.type === 'outbound-rtp' && r.kind === 'video') publishes = true;
      if (r.type === 'outbound-rtp' && r.kind === 'video') {
        sending.push(`${r.rid || '-'}:${r.frameHeight || 0}p@${r.framesPerSecond || 0}/${Math.round((r.targetBitrate || 0) / 1000)}k/${r.qualityLimitationReason}`);
      }
      if (r.type === 'candidate-pair' && r.nominated && r.availableOutgoingBitrate) pairKbps = Math.round(r.availableOutgoingBitrate / 1000);
      if (r.type === 'inbound-rtp' && r.kind === 'video' && (!inbound || (r.framesDecoded || 0) > inbound.framesDecoded)) {
        inbound = {
          frameWidth: r.frameWidth || 0,
          frameHeight: r.frameHeight || 0,
          framesDecoded: r.framesDecoded || 0,
          freezeCount: r.freezeCount || 0,
          totalFreezesDuration: r.totalFreezesDuration || 0,
          packetsReceived: r.packetsReceived || 0,
          packetsLost: r.packetsLost || 0,
          nackCount: r.nackCount || 0,
          retransmittedPacketsReceived: r.retransmittedPacketsReceived || 0,
          pliCount: r.pliCount || 0,
          keyFramesDecoded: r.keyFramesDecoded || 0,
        };
      }
    });
    if (publishes) uplinkKbps = pairKbps;
  }
  const local = document.querySelector('.tile-local video');
  const track = local && local.srcObject && local.srcObject.getVideoTracks()[0];
  const remote = document.querySelector('.tile:not(.tile-local) video');
  const rect = remote ? remote.getBoundingClientRect() : { width: 0, height: 0 };
  const ratio = window.devicePixelRatio || 1;
  return {
    inbound,
    sending: sending.sort().join(' '),
    uplinkKbps,
    camera: track ? track.getSettings() : null,
    tile: `${Math.round(rect.width * ratio)}x${Math.round(rect.height * ratio)}`,
  };
}

/** Samples `page` every 250 ms for `ms` and sums up the window. */
async function measure(who, page, ms) {
  const first = await page.evaluate(snapshot);
  if (!first.inbound) throw new Error(`${who}: no inbound video to measure`);
  const start = Date.now();
  const samples = [[start, first.inbound.framesDecoded]];
  let last = first;
  let lastNewFrame = start;
  let longestStallMs = 0;
  const heights = {}; // frame height -> samples that saw it
  let stalledMs = 0; // time in stalls of 500 ms or more
  while (Date.now() - start < ms) {
    await page.waitForTimeout(250);
    const now = await page.evaluate(snapshot);
    const t = Date.now();
    if (!now.inbound) continue;
    if (now.inbound.framesDecoded > last.inbound.framesDecoded) {
      if (t - lastNewFrame >= 500) stalledMs += t - lastNewFrame;
      lastNewFrame = t;
    }
    heights[now.inbound.frameHeight] = (heights[now.inbound.frameHeight] || 0) + 1;
    longestStallMs = Math.max(longestStallMs, t - lastNewFrame);
    samples.push([t, now.inbound.framesDecoded]);
    last = now;
  }
  const end = samples[samples.length - 1];
  if (end[0] - lastNewFrame >= 500) stalledMs += end[0] - lastNewFrame; // still stalled
  let minFps1s = Infinity;
  for (const [t, n] of samples) {
    const later = samples.find(([u]) => u >= t + 1000);
    if (later) minFps1s = Math.min(minFps1s, ((later[1] - n) * 1000) / (later[0] - t));
  }
  const a = first.inbound;
  const b = last.inbound;
  const framesDecoded = b.framesDecoded - a.framesDecoded;
  return {
    who,
    frameWidth: b.frameWidth,
    frameHeight: b.frameHeight,
    windowMs: end[0] - start,
    framesDecoded,
    fps: Math.round((framesDecoded * 10000) / (end[0] - start)) / 10,
    freezeCount: b.freezeCount - a.freezeCount,
    totalFreezesDuration: Math.round((b.totalFreezesDuration - a.totalFreezesDuration) * 1000) / 1000,
    longestStallMs,
    stalledMs,
    heights,
    minFps1s: Number.isFinite(minFps1s) ? Math.round(minFps1s * 10) / 10 : 0,
    packetsReceived: b.packetsReceived - a.packetsReceived,
    packetsLost: b.packetsLost - a.packetsLost,
    nackCount: b.nackCount - a.nackCount,
    retransmittedPacketsReceived: b.retransmittedPacketsReceived - a.retransmittedPacketsReceived,
    pliCount: b.pliCount - a.pliCount,
    keyFramesDecoded: b.keyFramesDecoded - a.keyFramesDecoded,
    sending: last.sending,
    uplinkKbps: last.uplinkKbps,
    camera: last.camera && `${last.camera.width}x${last.camera.height}@${last.camera.frameRate}`,
    tile: last.tile,
  };
}

async function main() {
  const { chromium } = await loadPlaywright();
  mkdirSync(outDir, { recursive: true });
  const http = httpClient(bases.doctor);
  const tokens = await devTokens(http, people);
  const created = await appointment(http, tokens, people);
  log(`appointment ${created.id} confirmed${noNack ? ' (pages without NACK)' : ''}`);

  const browsers = [];
  const pages = {};
  const failures = [];
  try {
    for (const who of Object.keys(people)) {
      const base = bases[who];
      const browser = await launchChromium(chromium, base, { executable: executables[who], fakeDevice: 'fps=30' });
      browsers.push(browser);
      const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      await context.grantPermissions(['camera', 'microphone'], { origin: base });
      await context.addInitScript((token) => sessionStorage.setItem('callrelay.token', token), tokens[who]);
      await context.addInitScript(keepPeerConnections);
      if (noNack) await context.addInitScript(stripNack);
      const page = await context.newPage();
      page.on('pageerror', (e) => {
        failures.push(`${who} page error: ${e.message}`);
        log(`${who} PAGE ERROR: ${e.message}`);
      });
      pages[who] = page;
      // Loaded again if it does not finish: a browser just put in a namespace may miss a script.
      const button = page.getByRole('button', { name: 'Join consultation' });
      await openPage(page, `${base}/consult/${created.id}`, button, log);
      await page.waitForFunction(() => !document.querySelector('.lobby button.primary').disabled);
      await button.click();
      await page.locator('.grid').waitFor();
      log(`${who} joined`);
    }
    for (const [who, page] of Object.entries(pages)) {
      try {
        await page.waitForFunction(() => {
          const v = document.querySelector('.tile:not(.tile-local) video');
          const badge = document.querySelector('.path-badge');
          return v && v.videoWidth > 0 && badge && badge.dataset.path === 'relay';
        }, null, { timeout: 30000 });
        const s = await page.evaluate(snapshot);
        log(`${who} sees the other over the relay: camera ${JSON.stringify(s.camera && [s.camera.width, s.camera.height, s.camera.frameRate])}, remote tile ${s.tile} device px`);
      } catch (err) {
        failures.push(`${who} does not see the other's video over the relay (${err.message.split('\n')[0]})`);
      }
    }
    if (!failures.length) {
      if (conditionCmd) {
        log(`condition: ${conditionCmd}`);
        execSync(conditionCmd, { stdio: 'inherit' });
      }
      await new Promise((r) => setTimeout(r, settleMs));
      const results = await Promise.all(Object.entries(pages).map(([who, page]) => measure(who, page, measureMs)));
      for (const r of results) console.log(`QUALITY ${JSON.stringify(r)}`);
      for (const [who, page] of Object.entries(pages)) {
        await page.screenshot({ path: path.join(outDir, `callrelay-quality-${who}.png`) }).catch(() => {});
      }
    }
  } finally {
    for (const b of browsers) await b.close();
  }
  if (failures.length) {
    console.error(`\nQUALITY FAILED:\n - ${failures.join('\n - ')}`);
    process.exit(1);
  }
  log('QUALITY OK');
}

main().catch((err) => {
  console.error('QUALITY ERROR:', err);
  process.exit(1);
});
