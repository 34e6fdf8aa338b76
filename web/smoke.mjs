#!/usr/bin/env node
// End-to-end smoke test of the web client in headless Chromium.
//
//   node web/smoke.mjs [BASE_URL] [--expect p2p|relay] [--out DIR] [--keep-open-ms N]
//
// BASE_URL defaults to http://127.0.0.1:3999. The server must serve this web/ folder and have
// auth.dev_tokens on. A doctor and a patient (two browser contexts, fake camera/microphone):
// the appointment is created and confirmed over HTTP; the doctor signs in through the sign-in
// form and joins from the appointment list, the patient opens /consult/{id} directly; both must
// see the other's video playing (videoWidth > 0) over the expected media path (default p2p);
// a chat message goes each way; screenshots go to DIR (default /tmp).
//
// Needs playwright-core (never `npx playwright install`: it drives the system Chromium):
//   npm install --prefix /tmp/callrelay-web playwright-core
//   NODE_PATH=/tmp/callrelay-web/node_modules node web/smoke.mjs http://127.0.0.1:3999
// and Chromium: apt-get install -y --no-install-recommends chromium fonts-liberation
// (CHROMIUM=/path/to/chrome overrides /usr/bin/chromium).
// A failed run prints what each page's peer connections went through (SMOKE_TRACE=1: every run).

import { mkdirSync } from 'node:fs';
import { execSync } from 'node:child_process';
import path from 'node:path';

import {
  httpClient, keepPeerConnections, launchChromium, loadPlaywright, openPage, options, printPeerConnectionTraces,
} from './smoke-kit.mjs';

const args = process.argv.slice(2);
const opt = options(args);
let expectPath = opt('--expect', null);
// --expect-transport udp|tcp: the relay must carry the call over this transport (shown on the
// page's path badge, from the browser's selected candidate pair).
const expectTransport = opt('--expect-transport', null);
// --mid-call-cmd CMD: once both see each other, run CMD (a shell command that changes the
// browsers' network, e.g. renumbers their namespace); both pictures must freeze and come back,
// moving, without a page reload (the time from CMD to the first new frame is printed); each
// frozen remote tile must have said "Reconnecting…" (and no longer once frames move), and no
// "connection to the server was interrupted" notice may remain.
const midCallCmd = opt('--mid-call-cmd', null);
// --after-expect p2p|relay: after the mid-call command, the video that comes back must travel
// this path (e.g. relay: the direct path was cut and the call fell back to the SFU).
const afterExpect = opt('--after-expect', null);
// --after-expect-transport udp|tcp: ... and over this transport (the relay moved to ICE-TCP).
const afterExpectTransport = opt('--after-expect-transport', null);
// --recover-within-ms N: the video must move again within N ms of the mid-call command.
const recoverWithinMs = Number(opt('--recover-within-ms', '0'));
// --restore-cmd CMD: undoes --mid-call-cmd. Given, the direct call part runs it first, places the
// call over the --expect path, runs --mid-call-cmd again mid-call and checks the call's picture
// the same way (freeze, back within --recover-within-ms, over --after-expect).
const restoreCmd = opt('--restore-cmd', null);
// --signaling-cut-cmd CMD: once both see each other, run CMD (a shell command that kills the
// browsers' Socket.IO connections, e.g. `ss -K`); both pages must reconnect and say
// "Reconnected.", and the pictures must not stop meanwhile: the same video elements, new frames
// all along (a working direct connection needs no server).
const signalingCutCmd = opt('--signaling-cut-cmd', null);
const outDir = opt('--out', '/tmp');
const keepOpenMs = Number(opt('--keep-open-ms', '0'));
// --block-p2p: browsers may only use TURN relay candidates (there is no TURN server), so the
// direct attempt times out and the room must fall back to the SFU (implies --expect relay).
const blockP2P = args.includes('--block-p2p') && args.splice(args.indexOf('--block-p2p'), 1);
const withCalls = !(args.includes('--no-calls') && args.splice(args.indexOf('--no-calls'), 1));
const base = (args[0] || 'http://127.0.0.1:3999').replace(/\/$/, '');
expectPath = expectPath || (blockP2P ? 'relay' : 'p2p');
if (!['p2p', 'relay'].includes(expectPath)) throw new Error('--expect is p2p or relay');
if (afterExpect && !['p2p', 'relay'].includes(afterExpect)) throw new Error('--after-expect is p2p or relay');

const log = (...m) => console.log(`[smoke ${new Date().toISOString().slice(11, 23)}]`, ...m);

const http = httpClient(base);

const run = Math.random().toString(36).slice(2, 8);
const doctor = { sub: `doc-${run}`, name: 'Dr Ada Lovelace', role: 'doctor' };
const patient = { sub: `pat-${run}`, name: 'Pat Smith', role: 'patient' };

/**
 * Watches one page every 250 ms after a mid-call change at `changed`: its picture must freeze
 * (no more than 5 new frames in a second), then move again (more than 5 in a second); the
 * recovery time is that of the first new frame of the moving run. `sample(page)` returns
 * {frames: {elementId: totalVideoFrames}, overlay, interrupted}.
 */
async function watchRecovery(page, sample, changed) {
  let recoveredAt = null;
  let frozenSeen = false;
  let overlaySeenAt = null;
  let interruptedSeen = false; // the room-level notice of a lost signaling connection
  let runStart = null;
  const recent = []; // [time, new frames] of the last second
  let last = (await sample(page)).frames;
  while (Date.now() - changed < 40000) {
    await page.waitForTimeout(250);
    const now = await sample(page);
    const t = Date.now();
    const fresh = Object.entries(now.frames).reduce((sum, [id, n]) => sum + Math.max(0, n - (last[id] ?? 0)), 0);
    last = now.frames;
    if (now.overlay && overlaySeenAt === null) overlaySeenAt = t;
    if (now.interrupted) interruptedSeen = true;
    recent.push([t, fresh]);
    while (recent.length && recent[0][0] < t - 1000) recent.shift();
    if (fresh === 0) runStart = null;
    else if (runStart === null) runStart = t;
    if (t - changed < 1000) continue; // a full window after the change
    const inWindow = recent.reduce((sum, [, n]) => sum + n, 0);
    if (inWindow <= 5) frozenSeen = true;
    else if (frozenSeen && runStart !== null) {
      recoveredAt = runStart;
      break;
    }
  }
  return { frozenSeen, recoveredAt, overlaySeenAt, interruptedSeen };
}

async function main() {
  const { chromium } = await loadPlaywright();
  mkdirSync(outDir, { recursive: true });

  // --- HTTP: tokens, appointment, confirmation
  const doctorToken = (await http('POST', '/api/dev/token', null, doctor)).token;
  const patientToken = (await http('POST', '/api/dev/token', null, patient)).token;
  const when = new Date(Date.now() + 15 * 60 * 1000).toISOString();
  const created = await http('POST', '/api/appointments', doctorToken, {
    patientId: patient.sub,
    doctorId: doctor.sub,
    scheduledAt: when,
    patientName: patient.name,
    doctorName: doctor.name,
  });
  const confirmed = await http('POST', `/api/appointments/${created.id}/confirm`, doctorToken);
  if (confirmed.status !== 'confirmed' || confirmed.joinUrl !== `/consult/${created.id}`) {
    throw new Error(`unexpected confirmation: ${JSON.stringify(confirmed)}`);
  }
  log(`appointment ${created.id} confirmed`);

  const browser = await launchChromium(chromium, base);
  const failures = [];
  const pages = {};
  let tracesPrinted = false;
  const printTraces = async () => {
    if (tracesPrinted) return;
    tracesPrinted = true;
    await printPeerConnectionTraces(pages, log);
    // What the relay did meanwhile: keyframe requests, paused videos, estimates, packets.
    const metrics = await fetch(`${base}/metrics`).then((r) => r.text()).catch((err) => `(not read: ${err.message})`);
    const relevant = metrics.split('\n').filter((l) => /^callrelay_(rtcp|sfu_video_pauses|sfu_layer_switches|subscriber_bandwidth|rtp_packets_(received|forwarded|lost))/.test(l));
    log(`the server's media metrics:\n    ${relevant.join('\n    ')}`);
  };
  try {
    for (const who of ['doctor', 'patient']) {
      const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      await context.grantPermissions(['camera', 'microphone'], { origin: base });
      if (blockP2P) await context.addInitScript(() => sessionStorage.setItem('callrelay.debug.blockP2P', '1'));
      await context.addInitScript(keepPeerConnections);
      const page = await context.newPage();
      page.on('console', (m) => {
        if (m.type() === 'error' || m.type() === 'warning') log(`${who} console.${m.type()}: ${m.text()}`);
      });
      page.on('pageerror', (e) => {
        failures.push(`${who} page error: ${e.message}`);
        log(`${who} PAGE ERROR: ${e.message}`);
      });
      pages[who] = page;
    }

    // --- doctor: sign in through the form, then join from the appointment list
    const d = pages.doctor;
    await openPage(d, `${base}/`, d.getByLabel('User id'), log);
    await d.getByLabel('User id').fill(doctor.sub);
    await d.getByLabel('Display name').fill(doctor.name);
    await d.getByLabel('Role').selectOption('doctor');
    await d.getByRole('button', { name: 'Sign in' }).click();
    await d.locator(`.appt[data-id="${created.id}"]`).waitFor();
    await d.screenshot({ path: path.join(outDir, 'callrelay-smoke-doctor-home.png') });
    await d.locator(`.appt[data-id="${created.id}"] a`, { hasText: 'Join' }).click();
    await d.waitForURL(`**/consult/${created.id}`);

    // --- patient: token already in the session, straight to the room's address
    const p = pages.patient;
    await p.addInitScript((token) => sessionStorage.setItem('callrelay.token', token), patientToken);
    await openPage(p, `${base}/consult/${created.id}`, p.getByRole('button', { name: 'Join consultation' }), log);

    for (const [who, page] of Object.entries(pages)) {
      const join = page.getByRole('button', { name: 'Join consultation' });
      await join.waitFor();
      await page.waitForFunction(() => !document.querySelector('.lobby button.primary').disabled);
      await join.click();
      await page.locator('.grid').waitFor();
      log(`${who} joined`);
    }

    // --- both see the other's video playing, over the expected path
    for (const [who, page] of Object.entries(pages)) {
      const started = Date.now();
      try {
        await page.waitForFunction(
          (expected) => {
            const videos = [...document.querySelectorAll('.tile:not(.tile-local) video')];
            const badge = document.querySelector('.path-badge');
            return videos.length === 1 && videos[0].videoWidth > 0 && badge && badge.dataset.path === expected.path
              && (!expected.transport || badge.dataset.transport === expected.transport);
          },
          { path: expectPath, transport: expectTransport },
          { timeout: expectPath === 'relay' ? 30000 : 15000 },
        );
        const info = await page.evaluate(() => {
          const v = document.querySelector('.tile:not(.tile-local) video');
          return {
            size: `${v.videoWidth}x${v.videoHeight}`,
            badge: document.querySelector('.path-badge').textContent,
            peer: v.closest('.tile').querySelector('.tile-name').textContent,
          };
        });
        log(`${who} sees ${info.peer}: video ${info.size}, path "${info.badge}" after ${Date.now() - started} ms`);
      } catch (err) {
        const badge = await page.locator('.path-badge').textContent().catch(() => '?');
        failures.push(`${who} does not see the other's video over ${expectPath} (badge "${badge}")`);
        log(`${who} FAILED to see remote video: ${err.message.split('\n')[0]}`);
      }
    }

    // --- the signaling connection drops: the media must carry on untouched
    if (signalingCutCmd && failures.length === 0) await signalingCut(pages, failures);

    // --- the network changes mid-call: the pictures must come back without a reload
    if (midCallCmd && failures.length === 0) {
      for (const page of Object.values(pages)) await page.evaluate(() => { window.__sameDocument = true; });
      log(`mid-call: ${midCallCmd}`);
      execSync(midCallCmd, { stdio: 'inherit' });
      const changed = Date.now();
      // Frames shown so far by each remote video, by element (tiles may be replaced when the
      // room is joined again over a new signaling connection), whether a remote tile says
      // "Reconnecting…", and the path badge.
      const sample = (page) => page.evaluate(() => {
        const frames = {};
        for (const v of document.querySelectorAll('.tile:not(.tile-local) video')) {
          v.dataset.smokeId = v.dataset.smokeId || Math.random().toString(36).slice(2);
          frames[v.dataset.smokeId] = v.getVideoPlaybackQuality().totalVideoFrames;
        }
        const overlay = [...document.querySelectorAll('.tile.reconnecting .tile-overlay[role="status"]')]
          .some((el) => el.getAttribute('aria-live') && /Reconnecting/.test(el.textContent));
        const badge = document.querySelector('.path-badge');
        const interrupted = [...document.querySelectorAll('.notices .notice')].some((el) => /interrupted/i.test(el.textContent));
        return { frames, overlay, interrupted, path: badge ? badge.dataset.path : null };
      });
      // Both watched at once.
      await Promise.all(Object.entries(pages).map(async ([who, page]) => {
        const { frozenSeen, recoveredAt, overlaySeenAt, interruptedSeen } = await watchRecovery(page, sample, changed);
        const same = await page.evaluate(() => window.__sameDocument === true);
        const badge = await page.locator('.path-badge').textContent().catch(() => '?');
        const tookMs = recoveredAt === null ? null : recoveredAt - changed;
        if (!frozenSeen) {
          failures.push(`${who}: the mid-call change never interrupted the picture (nothing was tested)`);
          return;
        }
        if (tookMs === null) {
          failures.push(`${who}: the picture did not come back after the mid-call change (badge "${badge}")`);
          return;
        }
        if (!same) failures.push(`${who}: the page reloaded`);
        log(`${who} sees video again ${tookMs} ms after the mid-call change (badge "${badge}"; `
          + `"Reconnecting…" shown ${overlaySeenAt === null ? 'never' : `after ${overlaySeenAt - changed} ms`}; `
          + `"interrupted" notice ${interruptedSeen ? 'shown' : 'not shown'})`);
        if (recoverWithinMs && tookMs > recoverWithinMs) {
          failures.push(`${who}: video came back after ${tookMs} ms, more than ${recoverWithinMs} ms`);
        }
        if (afterExpect) {
          try {
            await page.waitForFunction(
              ({ path, transport }) => {
                const b = document.querySelector('.path-badge').dataset;
                return b.path === path && (!transport || b.transport === transport);
              },
              { path: afterExpect, transport: afterExpectTransport }, { timeout: 3000 });
          } catch {
            const now = await page.locator('.path-badge').textContent().catch(() => '?');
            failures.push(`${who}: after the mid-call change the path is "${now}", not ${afterExpect} ${afterExpectTransport || ''}`);
          }
        }
        // The frozen tile said so, and says nothing once the picture moves again.
        if (overlaySeenAt === null) failures.push(`${who}: no "Reconnecting…" overlay while the picture was frozen`);
        try {
          await page.waitForFunction(() => document.querySelectorAll('.tile.reconnecting').length === 0
            && [...document.querySelectorAll('.tile-overlay')].every((el) => el.textContent === ''), null, { timeout: 3000 });
        } catch {
          failures.push(`${who}: the "Reconnecting…" overlay stayed after the picture came back`);
        }
        // No stale "interrupted" notice once the room is joined again.
        try {
          await page.waitForFunction(() => ![...document.querySelectorAll('.notices .notice')]
            .some((el) => /interrupted/i.test(el.textContent)), null, { timeout: 5000 });
        } catch {
          failures.push(`${who}: the "connection interrupted" notice stayed after the room was joined again`);
        }
      }));
      // Read now: the doctor's page is left below, and its notes with it.
      if (failures.length || process.env.SMOKE_TRACE) await printTraces();
    }

    // --- chat both ways (each message shown exactly once on both sides)
    const say = async (from, to, text) => {
      await pages[from].getByLabel('Message').fill(text);
      await pages[from].getByRole('button', { name: 'Send' }).click();
      for (const who of [from, to]) {
        try {
          await pages[who].locator('.message-text', { hasText: text }).waitFor({ timeout: 5000 });
          const n = await pages[who].locator('.message-text', { hasText: text }).count();
          if (n !== 1) failures.push(`${who} shows "${text}" ${n} times`);
        } catch {
          failures.push(`${who} never shows the chat message "${text}"`);
        }
      }
    };
    await say('doctor', 'patient', 'Good morning, how are you feeling today?');
    await say('patient', 'doctor', 'Much better, thank you!');
    log('chat exchanged');

    const transcript = await http('GET', `/api/appointments/${created.id}/messages`, patientToken);
    if (transcript.messages.length !== 2) failures.push(`transcript has ${transcript.messages.length} messages, expected 2`);

    await new Promise((r) => setTimeout(r, 1500 + keepOpenMs)); // let the picture settle for the screenshot
    for (const [who, page] of Object.entries(pages)) {
      const file = path.join(outDir, `callrelay-smoke-${who}.png`);
      await page.screenshot({ path: file });
      log(`screenshot ${file}`);
    }

    // --- leave: the doctor hangs up, the patient sees them go
    await d.getByRole('button', { name: 'Leave' }).click();
    await d.waitForURL(`${base}/`);
    try {
      await p.waitForFunction(() => document.querySelectorAll('.tile:not(.tile-local)').length === 0, null, { timeout: 5000 });
      log('patient saw the doctor leave');
    } catch {
      failures.push('the patient still shows the doctor after they left');
    }

    if (withCalls) await directCall(pages, created.id, failures);
  } finally {
    if (failures.length || process.env.SMOKE_TRACE) await printTraces();
    await browser.close();
  }

  if (failures.length) {
    console.error(`\nSMOKE FAILED:\n - ${failures.join('\n - ')}`);
    process.exit(1);
  }
  log(`SMOKE OK (${expectPath})`);
}

// The doctor (now on the appointment list) calls the patient (still in the room); the patient
// answers from the ringing banner; both see each other; the doctor hangs up; history shows it.
async function directCall(pages, appointmentId, failures) {
  const d = pages.doctor;
  const p = pages.patient;
  if (midCallCmd && restoreCmd) {
    log(`before the call: ${restoreCmd}`);
    execSync(restoreCmd, { stdio: 'inherit' });
  }
  await d.locator(`.appt[data-id="${appointmentId}"] button`, { hasText: 'Call patient' }).click();
  const banner = p.locator('.ringing');
  try {
    await banner.waitFor({ timeout: 10000 });
  } catch {
    failures.push('the patient never saw the incoming call');
    return;
  }
  await p.screenshot({ path: path.join(outDir, 'callrelay-smoke-ringing.png') });
  log(`patient is ringing: "${(await banner.innerText()).replace(/\s+/g, ' ')}"`);
  await banner.getByRole('button', { name: 'Answer' }).click();
  const callPath = expectPath; // sfu-only (or blocked P2P) relays direct calls too
  for (const [who, page] of Object.entries(pages)) {
    try {
      await page.waitForFunction(
        (expected) => {
          const v = document.querySelector('.call-dock:not(.ended) video.call-remote');
          const badge = document.querySelector('.call-dock .path-badge');
          return v && v.videoWidth > 0 && badge && badge.dataset.path === expected;
        },
        callPath,
        { timeout: callPath === 'relay' ? 30000 : 15000 },
      );
      log(`${who} sees the other in the call over ${callPath}`);
    } catch {
      const status = await page.locator('.call-dock .call-status').textContent().catch(() => '?');
      failures.push(`${who} does not see the other's video in the direct call over ${callPath} (status "${status}")`);
    }
  }
  if (midCallCmd && restoreCmd && failures.length === 0) await callPathCut(pages, failures);
  await new Promise((r) => setTimeout(r, 1000));
  await d.screenshot({ path: path.join(outDir, 'callrelay-smoke-call-doctor.png') });
  await d.locator('.call-dock').getByRole('button', { name: 'Hang up' }).click();
  try {
    await p.locator('.call-dock .call-status', { hasText: 'hung up' }).waitFor({ timeout: 5000 });
    log('patient was told the doctor hung up');
  } catch {
    failures.push('the patient was not told that the doctor hung up');
  }
  await d.getByRole('link', { name: 'Call history' }).click();
  try {
    await d.locator('table tbody tr').first().waitFor({ timeout: 5000 });
    const row = (await d.locator('table tbody tr').first().innerText()).replace(/\s+/g, ' ');
    log(`doctor's call history: ${row}`);
    if (!/ended/i.test(row)) failures.push(`the newest call is not shown as ended: ${row}`);
  } catch {
    failures.push('the call history shows no call');
  }
  await d.screenshot({ path: path.join(outDir, 'callrelay-smoke-history.png') });
}

// The mid-call change again, during the direct call: both call pictures must freeze and come
// back (over --after-expect, within --recover-within-ms) without a reload.
async function callPathCut(pages, failures) {
  log(`mid-call (direct call): ${midCallCmd}`);
  execSync(midCallCmd, { stdio: 'inherit' });
  const changed = Date.now();
  const sample = (page) => page.evaluate(() => {
    const frames = {};
    for (const v of document.querySelectorAll('.call-dock:not(.ended) video.call-remote')) {
      v.dataset.smokeId = v.dataset.smokeId || Math.random().toString(36).slice(2);
      frames[v.dataset.smokeId] = v.getVideoPlaybackQuality().totalVideoFrames;
    }
    return { frames, overlay: false, interrupted: false };
  });
  await Promise.all(Object.entries(pages).map(async ([who, page]) => {
    const { frozenSeen, recoveredAt } = await watchRecovery(page, sample, changed);
    const badge = await page.locator('.call-dock .path-badge').textContent().catch(() => '?');
    if (!frozenSeen) {
      failures.push(`${who}: the mid-call change never interrupted the call's picture (nothing was tested)`);
      return;
    }
    if (recoveredAt === null) {
      failures.push(`${who}: the call's picture did not come back after the mid-call change (badge "${badge}")`);
      return;
    }
    const tookMs = recoveredAt - changed;
    log(`${who} sees the call's video again ${tookMs} ms after the mid-call change (badge "${badge}")`);
    if (recoverWithinMs && tookMs > recoverWithinMs) {
      failures.push(`${who}: the call's video came back after ${tookMs} ms, more than ${recoverWithinMs} ms`);
    }
    if (afterExpect) {
      try {
        await page.waitForFunction(
          (expected) => document.querySelector('.call-dock .path-badge').dataset.path === expected,
          afterExpect, { timeout: 3000 });
      } catch {
        failures.push(`${who}: after the mid-call change the call's path is "${badge}", not ${afterExpect}`);
      }
    }
  }));
}

main().catch((err) => {
  console.error('SMOKE ERROR:', err);
  process.exit(1);
});

/** --signaling-cut-cmd: the pictures go on, on the same elements, while the pages reconnect. */
async function signalingCut(pages, failures) {
  const frames = (page) => page.evaluate(() => {
    const v = document.querySelector('.tile:not(.tile-local) video');
    if (!v) return null;
    v.dataset.smokeCut = v.dataset.smokeCut || 'before';
    return { mark: v.dataset.smokeCut, frames: v.getVideoPlaybackQuality().totalVideoFrames };
  });
  const before = await Promise.all(Object.values(pages).map(frames));
  log(`signaling cut: ${signalingCutCmd}`);
  execSync(signalingCutCmd, { stdio: 'inherit' });
  const cut = Date.now();
  await Promise.all(Object.entries(pages).map(async ([who, page], i) => {
    let last = before[i];
    let reconnectedAt = 0;
    while (Date.now() - cut < 10000) {
      await page.waitForTimeout(1000);
      const now = await frames(page);
      if (!now || now.mark !== 'before') {
        failures.push(`${who}: the remote picture was replaced after the signaling cut`);
        return;
      }
      if (now.frames <= last.frames + 5) {
        failures.push(`${who}: the picture stopped after the signaling cut (${now.frames - last.frames} frames in 1 s)`);
        return;
      }
      last = now;
      if (!reconnectedAt && await page.getByText('Reconnected.').count()) reconnectedAt = Date.now() - cut;
    }
    const badge = await page.locator('.path-badge').textContent().catch(() => '?');
    if (!reconnectedAt) {
      const notices = await page.locator('.notices').textContent().catch(() => '?');
      failures.push(`${who}: never said "Reconnected." after the signaling cut (notices: "${notices}")`);
    }
    else log(`${who} reconnected ${reconnectedAt} ms after the signaling cut; the picture never stopped (badge "${badge}")`);
  }));
}
