#!/usr/bin/env node
// The consultation as patients and doctors expect it (issue 14), in headless Chromium.
//
//   node web/smoke-consult-ux.mjs BASE_URL [--out DIR]
//
// 1. A cancelled appointment's page says why it cannot be joined; Join stays disabled and the
//    camera is never opened. One cancelled while the patient is in its lobby: Join says why
//    (no raw error code) and the camera closes.
// 2. The lobby of a confirmed one: camera, microphone and speaker selectors, a moving
//    microphone meter, "Join muted" / "Camera off" remembered across a reload.
// 3. Two browsers, peer-to-peer: the patient mutes and turns the camera off, the doctor sees the
//    microphone-off mark and the patient's initials instead of a black picture (and both back
//    on); the speaking ring lights on the other side; the patient shares the screen and the
//    doctor's large screen tile plays it (the shared screen's shape, frames advancing) while the
//    patient's tile keeps the camera, until it stops (and again); the patient switches microphone mid-call
//    and every connection sends the new one, the doctor still receiving sound; another speaker
//    takes the others' sound.
// 4. A third browser (an admin) joins: the room moves to the relay; it sees the patient's
//    microphone off at once (remembered by the server), and the patient's screen share through
//    the relay, decoded on both other browsers, and again after it stopped once.
// 5. A direct call (peer-to-peer): the callee mutes and shares its screen; the caller's call
//    window shows the microphone-off mark and the screen, large, playing.
//
// Chromium's fake devices: one camera, three microphones ("Fake Default Audio Input", "Fake
// Audio Input 1" and 2), three speakers; with --use-fake-ui-for-media-stream getDisplayMedia
// returns a fake "screen" (a moving test picture, 16:9) without a picker. Screenshots of each
// step go to DIR (default /tmp) as issue14-ux-*.png. Needs playwright-core and Chromium like
// web/smoke.mjs. UX_VERBOSE=1 prints every console message of the pages.

import { mkdirSync } from 'node:fs';
import path from 'node:path';

import {
  appointment, devTokens, httpClient, keepPeerConnections, launchChromium, loadPlaywright, options,
} from './smoke-kit.mjs';

const args = process.argv.slice(2);
const opt = options(args);
const outDir = opt('--out', '/tmp');
const base = (args[0] || 'http://127.0.0.1:3999').replace(/\/$/, '');

const started = Date.now();
const log = (...m) => console.log(`[ux ${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s]`, ...m);
const http = httpClient(base);

const run = Math.random().toString(36).slice(2, 8);
const people = {
  doctor: { sub: `doc-${run}`, name: 'Dr Ada Lovelace', role: 'doctor' },
  patient: { sub: `pat-${run}`, name: 'Pat Smith', role: 'patient' },
  admin: { sub: `adm-${run}`, name: 'Ann Admin', role: 'admin' },
};

const failures = [];
/** Runs one check; a failure is recorded with what the page showed, and the run goes on. */
async function check(what, fn) {
  try {
    await fn();
    log(`ok: ${what}`);
    return true;
  } catch (err) {
    failures.push(`${what}: ${err.message.split('\n')[0]}`);
    log(`FAILED: ${what}: ${err.message.split('\n')[0]}`);
    return false;
  }
}

async function shot(page, name) {
  await page.waitForTimeout(300); // the last change painted
  const file = path.join(outDir, `issue14-ux-${name}.png`);
  await page.screenshot({ path: file });
  log(`screenshot ${file}`);
}

/** In the page: the remote person tile named `name` as {mic, camera, speaking, hasVideo, avatar}. */
function tileState(name) {
  const tile = [...document.querySelectorAll('.grid .tile:not(.tile-local)')]
    .find((t) => t.querySelector('.tile-name').textContent.includes(name));
  if (!tile) return null;
  const avatar = tile.querySelector('.tile-avatar .avatar');
  const v = tile.querySelector('video');
  return {
    mic: tile.dataset.mic,
    camera: tile.dataset.camera,
    speaking: tile.dataset.speaking === 'true',
    hasVideo: tile.classList.contains('has-video'),
    avatarShown: Boolean(avatar && avatar.offsetParent && getComputedStyle(v).opacity === '0'),
    initials: avatar ? avatar.textContent : '',
    micMarkShown: !tile.querySelector('.tile-mic').hidden,
    width: v.videoWidth,
    height: v.videoHeight,
  };
}

/** In the page: the screen tile (consultation) or the call's screen: width and frames shown. */
function screenState() {
  const v = document.querySelector('.screen-tile video, .call-dock:not(.ended) video.call-screen');
  if (!v || !v.srcObject || getComputedStyle(v.closest('.screen-tile, .call-media')).display === 'none') return null;
  const label = (v.closest('.screen-tile') || v).getAttribute('aria-label') || '';
  return { width: v.videoWidth, height: v.videoHeight, frames: v.getVideoPlaybackQuality().totalVideoFrames, label };
}

/** Waits until `page.evaluate(fn, arg)` satisfies `ok`; throws with the last value. */
async function until(page, fn, arg, ok, timeout = 10000) {
  const t0 = Date.now();
  let last;
  while (Date.now() - t0 < timeout) {
    last = await page.evaluate(fn, arg);
    if (ok(last)) return last;
    await page.waitForTimeout(150);
  }
  throw new Error(`not within ${timeout} ms; last: ${JSON.stringify(last)}`);
}

/** In the page: the size of the screen track we share (the one with contentHint 'detail'). */
function sharedScreenSize() {
  const sender = (window.__pcs || []).flatMap((pc) => (pc.connectionState === 'closed' ? [] : pc.getSenders()))
    .find((s) => s.track && s.track.contentHint === 'detail' && s.track.readyState === 'live');
  if (!sender) return null;
  const { width, height } = sender.track.getSettings();
  return { width, height, id: sender.track.id };
}

/** In the page: the track ids the screen tile and the person tile named `name` play. */
function shownTrackIds(name) {
  const tile = [...document.querySelectorAll('.grid .tile:not(.tile-local)')]
    .find((t) => t.querySelector('.tile-name').textContent.includes(name));
  const ids = (v) => (v && v.srcObject ? v.srcObject.getVideoTracks().map((t) => t.id) : []);
  return { screen: ids(document.querySelector('.screen-tile video')), person: ids(tile && tile.querySelector('video')) };
}

/**
 * The screen `sharer` shares plays on `page`: a picture of the shared screen's shape (the
 * capture settles its size after its first frames, so it is read again each time) and at least
 * half its width (not a thumbnail, not the camera), whose frames advance.
 */
async function screenPlays(page, sharer) {
  const t0 = Date.now();
  let size;
  let first;
  while (Date.now() - t0 < 15000) {
    size = await sharer.evaluate(sharedScreenSize);
    first = await page.evaluate(screenState);
    if (size && first && first.frames > 0 && first.width >= size.width / 2
      && Math.abs(first.width / first.height - size.width / size.height) < 0.03) break;
    first = null;
    await page.waitForTimeout(150);
  }
  if (!first) throw new Error(`the shared screen (${JSON.stringify(size)}) is not shown: ${JSON.stringify(await page.evaluate(screenState))}`);
  // Frames advance (a shared screen sends few when little moves, fewer on a busy machine).
  const t1 = Date.now();
  const later = await until(page, screenState, null, (s) => s && s.frames >= first.frames + 3, 8000)
    .catch((err) => {
      throw new Error(`frames do not advance: ${err.message}; first ${JSON.stringify(first)}`);
    });
  log(`  screen shared ${size.width}x${size.height}, shown ${later.width}x${later.height}, ${later.frames - first.frames} new frames in ${Date.now() - t1} ms`);
  return later;
}

async function joinRoom(page) {
  await page.getByRole('button', { name: 'Join consultation' }).waitFor();
  await page.waitForFunction(() => !document.querySelector('.lobby button.primary').disabled, null, { timeout: 10000 });
  await page.getByRole('button', { name: 'Join consultation' }).click();
  await page.locator('.grid:not([hidden])').waitFor();
}

/** In the page: the label of the audio track every open peer connection sends. */
function sentMicLabels() {
  return (window.__pcs || []).filter((pc) => pc.connectionState !== 'closed')
    .flatMap((pc) => pc.getSenders().filter((s) => s.track && s.track.kind === 'audio').map((s) => s.track.label));
}

/** In the page: audio packets received on every open connection, summed. */
async function audioPacketsIn() {
  let n = 0;
  for (const pc of (window.__pcs || []).filter((c) => c.connectionState === 'connected')) {
    (await pc.getStats()).forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'audio') n += r.packetsReceived || 0;
    });
  }
  return n;
}

async function main() {
  const { chromium } = await loadPlaywright();
  mkdirSync(outDir, { recursive: true });
  const tokens = await devTokens(http, people);
  const room = await appointment(http, tokens, people);
  const cancelled = await appointment(http, tokens, people, { confirm: false });
  await http('POST', `/api/appointments/${cancelled.id}/cancel`, tokens.doctor);
  const cancelledLater = await appointment(http, tokens, people);

  const browser = await launchChromium(chromium, base);
  const pages = {};
  try {
    for (const who of Object.keys(people)) {
      const context = await browser.newContext({ viewport: { width: 1200, height: 760 } });
      await context.grantPermissions(['camera', 'microphone'], { origin: base });
      await context.addInitScript((token) => sessionStorage.setItem('callrelay.token', token), tokens[who]);
      // Keeps every peer connection (what they send, what they receive) and counts camera opens.
      await context.addInitScript(keepPeerConnections);
      await context.addInitScript(() => {
        window.__gum = 0;
        const gum = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
        navigator.mediaDevices.getUserMedia = (c) => {
          window.__gum += 1;
          return gum(c);
        };
      });
      const page = await context.newPage();
      page.on('pageerror', (e) => {
        failures.push(`${who} page error: ${e.message}`);
        log(`${who} PAGE ERROR: ${e.message}`);
      });
      page.on('console', (m) => {
        if (m.type() === 'error' || process.env.UX_VERBOSE) log(`${who} console.${m.type()}: ${m.text()}`);
      });
      pages[who] = page;
    }
    const { doctor: d, patient: p, admin: a } = pages;

    // --- 1. a cancelled appointment: why, in words; no camera, no Join
    await p.goto(`${base}/consult/${cancelled.id}`);
    await check('a cancelled appointment says why it cannot be joined, Join disabled, camera closed', async () => {
      await p.locator('.lobby-why', { hasText: 'cancelled' }).waitFor({ timeout: 10000 });
      await p.waitForTimeout(500);
      const state = await p.evaluate(() => ({
        join: document.querySelector('.lobby button.primary').disabled,
        gum: window.__gum,
        text: document.querySelector('.lobby-why').textContent,
        rawCode: /forbidden/.test(document.querySelector('.consult').textContent),
      }));
      if (!state.join) throw new Error('Join is enabled');
      if (state.gum !== 0) throw new Error(`the camera was opened ${state.gum} times`);
      if (state.rawCode) throw new Error('a raw "forbidden" code is shown');
    });
    await shot(p, '1-cancelled');
    await p.goto(`${base}/consult/${cancelledLater.id}`);
    await check('cancelled while in the lobby: Join says why in words and the camera closes', async () => {
      await p.locator('.lobby .device-panel:not([hidden])').waitFor({ timeout: 10000 });
      await http('POST', `/api/appointments/${cancelledLater.id}/cancel`, tokens.doctor);
      await p.getByRole('button', { name: 'Join consultation' }).click();
      await p.locator('.lobby-why', { hasText: 'cancelled' }).waitFor({ timeout: 10000 });
      const state = await p.evaluate(() => ({
        join: document.querySelector('.lobby button.primary').disabled,
        preview: document.querySelector('.lobby-preview').hidden,
        rawCode: [...document.querySelectorAll('.consult code')].map((c) => c.textContent),
      }));
      if (!state.join || !state.preview) throw new Error(`Join enabled or the preview still shown: ${JSON.stringify(state)}`);
      if (state.rawCode.length) throw new Error(`a raw code is shown: ${state.rawCode}`);
    });

    // --- 2. the lobby: selectors, a moving meter, remembered toggles
    await p.goto(`${base}/consult/${room.id}`);
    await check('the lobby lists cameras, microphones, speakers and its meter moves', async () => {
      await p.locator('.lobby .device-panel:not([hidden])').waitFor({ timeout: 10000 });
      await until(p, () => ({
        cams: document.querySelectorAll('#consult-dev-videoinput option').length,
        mics: [...document.querySelectorAll('#consult-dev-audioinput option')].map((o) => o.textContent),
        speakers: document.querySelectorAll('#consult-dev-audiooutput option').length,
      }), null, (s) => s.cams >= 1 && s.mics.length >= 2 && s.speakers >= 1);
      await until(p, () => Number(document.querySelector('.mic-meter').dataset.level || 0), null, (n) => n > 0, 8000);
    });
    await check('"Camera off" in the lobby shows the initials, and is remembered across a reload', async () => {
      await p.getByLabel('Camera off').check();
      await until(p, () => document.querySelector('.lobby-preview .tile').dataset.camera, null, (c) => c === 'off', 3000);
      await p.reload();
      await p.locator('.lobby .device-panel:not([hidden])').waitFor({ timeout: 10000 });
      if (!(await p.getByLabel('Camera off').isChecked())) throw new Error('not checked after a reload');
      await until(p, () => document.querySelector('.lobby-preview .tile').dataset.camera, null, (c) => c === 'off', 3000);
    });
    await shot(p, '2-lobby-camera-off');
    await p.getByLabel('Camera off').uncheck();

    // --- 3. peer-to-peer: the doctor sees the patient's state
    await d.goto(`${base}/consult/${room.id}`);
    await joinRoom(d);
    await joinRoom(p);
    const seesVideo = (page, name) => until(page, tileState, name, (s) => s && s.hasVideo && s.width > 0, 15000);
    await check('both see each other peer-to-peer', async () => {
      await seesVideo(d, 'Pat Smith');
      await seesVideo(p, 'Ada');
      await until(d, () => document.querySelector('.path-badge').dataset.path, null, (x) => x === 'p2p', 5000);
    });
    await check('the speaking ring lights on the other side', async () => {
      await until(d, tileState, 'Pat Smith', (s) => s && s.speaking, 10000);
    });
    await p.getByRole('button', { name: 'Mute' }).click();
    await p.getByRole('button', { name: 'Stop video' }).click();
    await check('the doctor sees the patient muted with the camera off: mic-off mark, initials, no picture', async () => {
      await until(d, tileState, 'Pat Smith', (s) => s && s.mic === 'off' && s.micMarkShown && s.camera === 'off' && !s.hasVideo && s.avatarShown && s.initials === 'PS');
    });
    await shot(d, '3-p2p-patient-muted-camera-off');
    await p.getByRole('button', { name: 'Unmute' }).click();
    await p.getByRole('button', { name: 'Start video' }).click();
    await check('and back on: no mark, the picture again', async () => {
      await until(d, tileState, 'Pat Smith', (s) => s && s.mic === 'on' && !s.micMarkShown && s.hasVideo);
    });

    await p.getByRole('button', { name: 'Share screen' }).click();
    await check('a screen shared peer-to-peer plays large on the other side', async () => {
      const s = await screenPlays(d, p);
      if (!/Pat Smith is presenting/.test(s.label)) throw new Error(`labelled "${s.label}"`);
      // The screen tile plays the track the patient shares (browsers keep its id end to end),
      // the person tile another one (the camera), with a picture.
      const shared = await p.evaluate(sharedScreenSize);
      await until(d, shownTrackIds, 'Pat Smith', (ids) => ids.screen[0] === shared.id && ids.person.length === 1 && ids.person[0] !== shared.id);
      await until(d, tileState, 'Pat Smith', (t) => t && t.hasVideo);
    });
    await shot(d, '4-p2p-screen-share');
    await p.getByRole('button', { name: 'Stop sharing' }).click();
    await check('a stopped share leaves the other side', async () => {
      await until(d, screenState, null, (s) => s === null);
    });
    await p.getByRole('button', { name: 'Share screen' }).click();
    await check('sharing again peer-to-peer plays, and stops', async () => {
      await screenPlays(d, p);
      await p.getByRole('button', { name: 'Stop sharing' }).click();
      await until(d, screenState, null, (s) => s === null);
    });

    await check('switching microphone mid-call: every connection sends the new one, sound still arrives', async () => {
      await p.getByRole('button', { name: 'Devices' }).click();
      const mic = p.locator('#consult-dev-audioinput');
      await mic.waitFor();
      await mic.selectOption({ label: 'Fake Audio Input 1' });
      await until(p, sentMicLabels, null, (labels) => labels.length > 0 && labels.every((l) => l === 'Fake Audio Input 1'));
      const before = await d.evaluate(audioPacketsIn);
      await d.waitForTimeout(1000);
      const after = await d.evaluate(audioPacketsIn);
      if (after <= before) throw new Error(`the doctor receives no more audio (${before} -> ${after} packets)`);
    });
    await check('another speaker: the others\' sound plays on it', async () => {
      const speaker = p.locator('#consult-dev-audiooutput');
      await speaker.selectOption({ label: 'Fake Audio Output 1' });
      const chosen = await speaker.inputValue();
      await until(p, (id) => [...document.querySelectorAll('video.remote-video')].map((v) => v.sinkId === id), chosen,
        (same) => same.length > 0 && same.every(Boolean), 3000);
    });
    await shot(p, '5-device-switch');
    await p.getByRole('button', { name: 'Devices' }).click();

    // --- 4. a third member: the relay
    await p.getByRole('button', { name: 'Mute' }).click();
    await a.goto(`${base}/consult/${room.id}`);
    await check('the choice of microphone is remembered (the admin\'s own browser has none)', async () => {
      await p.evaluate(() => JSON.parse(localStorage.getItem('callrelay.devices')).micId).then((id) => {
        if (!id) throw new Error('no micId remembered');
      });
    });
    await joinRoom(a);
    await check('a late joiner sees the patient muted at once (kept by the server), over the relay', async () => {
      await until(a, tileState, 'Pat Smith', (s) => s && s.mic === 'off' && s.micMarkShown, 5000);
      for (const page of [a, d, p]) await until(page, () => document.querySelector('.path-badge').dataset.path, null, (x) => x === 'relay', 20000);
      await seesVideo(a, 'Pat Smith');
      await seesVideo(a, 'Ada');
    });
    await p.getByRole('button', { name: 'Share screen' }).click();
    await check('a screen shared through the relay plays large on both other browsers', async () => {
      await screenPlays(a, p);
      await screenPlays(d, p);
    });
    await shot(a, '6-relay-screen-share-three');
    await p.getByRole('button', { name: 'Stop sharing' }).click();
    await check('the relayed share stops on both', async () => {
      await until(a, screenState, null, (s) => s === null);
      await until(d, screenState, null, (s) => s === null);
    });
    await p.getByRole('button', { name: 'Share screen' }).click();
    // The relay reuses the stopped share's m-section, and the browser its receiving track (which
    // keeps the first share's id): the new share is recognised by the m-section's msid.
    await check('sharing again through the relay (a stopped m-section reused) plays, and stops', async () => {
      await screenPlays(a, p);
      await p.getByRole('button', { name: 'Stop sharing' }).click();
      await until(a, screenState, null, (s) => s === null);
    });
    for (const page of [a, p, d]) {
      await page.getByRole('button', { name: 'Leave' }).click();
      await page.waitForURL(`${base}/`);
    }

    // --- 5. a direct call: mute and screen share seen by the caller
    await d.locator(`.appt[data-id="${room.id}"]`).getByRole('button', { name: 'Call patient' }).click();
    await p.locator('.ringing').getByRole('button', { name: 'Answer' }).click();
    await check('the direct call connects', async () => {
      await until(d, () => {
        const v = document.querySelector('.call-dock:not(.ended) video.call-remote');
        return v ? v.videoWidth : 0;
      }, null, (w) => w > 0, 15000);
    });
    await p.locator('.call-dock').getByRole('button', { name: 'Mute' }).click();
    await p.locator('.call-dock').getByRole('button', { name: 'Share screen' }).click();
    await check('the caller sees the callee muted and the screen, large, playing', async () => {
      await until(d, () => document.querySelector('.call-dock:not(.ended) .call-media').dataset.mic, null, (m) => m === 'off');
      await screenPlays(d, p);
    });
    await shot(d, '7-call-screen-share');
    await p.locator('.call-dock').getByRole('button', { name: 'Stop sharing' }).click();
    await check('the call\'s screen goes when the share stops', async () => {
      await until(d, screenState, null, (s) => s === null);
    });
    await d.locator('.call-dock').getByRole('button', { name: 'Hang up' }).click();
  } finally {
    await browser.close();
  }
  log(`took ${((Date.now() - started) / 1000).toFixed(1)} s`);
  if (failures.length) {
    console.error(`\nUX FAILED:\n - ${failures.join('\n - ')}`);
    process.exit(1);
  }
  log('UX OK');
}

main().catch((err) => {
  console.error('UX ERROR:', err);
  process.exit(1);
});
