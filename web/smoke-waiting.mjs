#!/usr/bin/env node
// The waiting room (issue 14) in headless Chromium, three browser contexts with a fake camera:
// the patient, the doctor in the room, and the doctor's second device on the appointment list.
//
//   node web/smoke-waiting.mjs [BASE_URL] [--out DIR]
//
// The server must serve web/, have auth.dev_tokens and consult.waiting_room on (the default).
// Walk: the patient opens the join link first and clicks Join → "Waiting for Dr Ada Lovelace to
// let you in"; the doctor's list shows "Pat Smith is waiting" (the tab title "(1) …", a chime
// and a notification); the doctor opens the room from the list: a banner "Pat Smith is waiting"
// with Admit and Decline; Decline → the patient reads that the doctor could not let them in and
// may ask again; Ask again → waiting again; the doctor joins, then admits from the room → both
// see each other's video (videoWidth > 0); the list line and the title's count go; the audit
// trail holds waiting.entered, waiting.declined, waiting.entered, waiting.admitted. Axe (when
// axe-core is installed) finds no serious or critical violation in the waiting screens.
// Screenshots: DIR/waiting-<step>.png.
//
// Needs playwright-core (NODE_PATH=tests/node/node_modules) and Chromium (CHROMIUM overrides
// /usr/bin/chromium); tests/browser_client.rs runs this.

import { mkdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

import { failureLog, httpClient, launchChromium, loadPlaywright, options } from './smoke-kit.mjs';

const args = process.argv.slice(2);
const opt = options(args);
const outDir = opt('--out', '/tmp');
const base = (args[0] || 'http://127.0.0.1:3999').replace(/\/$/, '');

const log = (...m) => console.log(`[waiting ${new Date().toISOString().slice(11, 23)}]`, ...m);
const http = httpClient(base);

let axeSource = null;
try {
  axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
} catch {
  log('axe-core not installed: no accessibility scan');
}

const { failures, fail, expectSoon } = failureLog(log);

async function shot(page, step) {
  await page.waitForTimeout(200);
  await page.screenshot({ path: path.join(outDir, `waiting-${step}.png`) });
}

/** No serious or critical axe violation inside `selector`. */
async function axe(page, selector, step) {
  if (!axeSource) return;
  if (!(await page.evaluate(() => !!window.axe))) await page.evaluate(axeSource);
  const violations = await page.evaluate(async (sel) => {
    const result = await window.axe.run({ include: [[sel]] }, { resultTypes: ['violations'] });
    return result.violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
  }, selector);
  for (const v of violations) fail(`${step}: axe ${v}`);
}

const run = Math.random().toString(36).slice(2, 8);
const doctor = { sub: `doc-${run}`, name: 'Dr Ada Lovelace', role: 'doctor' };
const patient = { sub: `pat-${run}`, name: 'Pat Smith', role: 'patient' };
const admin = { sub: `adm-${run}`, name: 'Ann Admin', role: 'admin' };

/** Stands in for the browser's notifications (allowed, page not focused) and counts the chimes. */
function recordAlerts() {
  window.__notifications = [];
  window.__chimes = 0;
  class RecordedNotification {
    constructor(title, opts = {}) {
      window.__notifications.push({ title, body: opts.body });
    }

    close() {}

    static requestPermission() {
      return Promise.resolve('granted');
    }
  }
  RecordedNotification.permission = 'granted';
  window.Notification = RecordedNotification;
  document.hasFocus = () => false;
  const Real = window.AudioContext;
  window.AudioContext = class extends Real {
    createOscillator() {
      window.__chimes += 1;
      return super.createOscillator();
    }
  };
}

async function main() {
  const { chromium } = await loadPlaywright();
  mkdirSync(outDir, { recursive: true });

  const token = async (u) => (await http('POST', '/api/dev/token', null, u)).token;
  const doctorToken = await token(doctor);
  const patientToken = await token(patient);
  const created = await http('POST', '/api/appointments', doctorToken, {
    patientId: patient.sub,
    doctorId: doctor.sub,
    scheduledAt: new Date(Date.now() + 10 * 60 * 1000).toISOString(),
    patientName: patient.name,
    doctorName: doctor.name,
  });
  await http('POST', `/api/appointments/${created.id}/confirm`, doctorToken);
  const row = `.appt[data-id="${created.id}"]`;
  log(`appointment ${created.id} confirmed`);

  const browser = await launchChromium(chromium, base);
  try {
    const open = async (who, tokenValue, { alerts = false } = {}) => {
      const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      await context.grantPermissions(['camera', 'microphone'], { origin: base });
      await context.addInitScript((t) => sessionStorage.setItem('callrelay.token', t), tokenValue);
      if (alerts) await context.addInitScript(recordAlerts);
      const page = await context.newPage();
      page.on('pageerror', (e) => fail(`${who} page error: ${e.message}`));
      page.on('console', (m) => {
        if (m.type() === 'error') log(`${who} console.error: ${m.text()}`);
      });
      return page;
    };
    const list = await open('doctor-list', doctorToken, { alerts: true });
    const d = await open('doctor', doctorToken);
    const p = await open('patient', patientToken);

    // --- the doctor's second device shows the appointment list; nobody waits yet
    await list.goto(`${base}/`);
    await list.locator(row).waitFor();
    await expectSoon('no waiting line before anyone waits', () => list.locator(`${row} .waiting-badge`).waitFor({ state: 'hidden', timeout: 2000 }));

    // --- the patient opens the join link first and asks to join
    await p.goto(`${base}/consult/${created.id}`);
    const joinP = p.getByRole('button', { name: 'Join consultation' });
    await joinP.waitFor();
    await p.waitForFunction(() => !document.querySelector('.lobby button.primary').disabled);
    await joinP.click();
    await expectSoon('the patient sees the waiting screen', () => p.getByText(`Waiting for ${doctor.name} to let you in`).waitFor({ timeout: 10000 }));
    await expectSoon('the patient can leave the waiting room', () => p.getByRole('button', { name: 'Leave the waiting room' }).waitFor());
    await shot(p, '1-patient-waiting');
    await axe(p, '.waiting-screen', 'patient waiting screen');

    // --- the doctor's list says so, in the row, the tab title, a chime and a notification
    await expectSoon('the list says "Pat Smith is waiting"', () => list.locator(`${row} .waiting-badge`, { hasText: 'Pat Smith is waiting' }).waitFor({ timeout: 10000 }));
    const alerted = await list.evaluate(() => ({ title: document.title, notifications: window.__notifications, chimes: window.__chimes }));
    if (!alerted.title.startsWith('(1) ')) fail(`the list's tab title counts the waiting patient: "${alerted.title}"`);
    if (!alerted.notifications.some((n) => n.title === 'Pat Smith is waiting')) fail(`a notification "Pat Smith is waiting": ${JSON.stringify(alerted.notifications)}`);
    if (alerted.chimes < 1) fail('a chime played on the list');
    log(`list: "${alerted.title}", notifications ${JSON.stringify(alerted.notifications)}, oscillators ${alerted.chimes}`);
    await shot(list, '2-doctor-list');
    await axe(list, '.waiting-badge', 'list waiting line');

    // --- the doctor opens the room from the list: a banner with Admit and Decline
    await d.goto(`${base}/`);
    await d.locator(`${row} a`, { hasText: 'Join' }).click();
    await d.waitForURL(`**/consult/${created.id}`);
    const banner = d.locator('.waiting-banner');
    await expectSoon('the room shows "Pat Smith is waiting"', () => banner.locator('.waiting-row', { hasText: 'Pat Smith is waiting' }).waitFor({ timeout: 10000 }));
    await d.waitForFunction(() => !document.querySelector('.lobby button.primary').disabled);
    await shot(d, '3-doctor-lobby-banner');
    await axe(d, '.waiting-banner', 'doctor banner');

    // --- Decline: the patient is told and may ask again
    await banner.getByRole('button', { name: 'Decline Pat Smith' }).click();
    await expectSoon('the patient reads that the doctor could not let them in', () => p.getByText(`${doctor.name} could not let you in`).waitFor({ timeout: 10000 }));
    await expectSoon('the banner empties after the decline', () => banner.waitFor({ state: 'hidden' }));
    await expectSoon('the list line goes after the decline', () => list.locator(`${row} .waiting-badge`).waitFor({ state: 'hidden', timeout: 10000 }));
    await shot(p, '4-patient-declined');
    const askAgain = p.getByRole('button', { name: 'Ask again' });
    await expectSoon('the patient may ask again', () => askAgain.waitFor());
    await askAgain.click();
    await expectSoon('waiting again', () => p.getByText(`Waiting for ${doctor.name} to let you in`).waitFor({ timeout: 10000 }));
    await expectSoon('the banner shows the patient again', () => banner.locator('.waiting-row', { hasText: 'Pat Smith is waiting' }).waitFor({ timeout: 10000 }));

    // --- the doctor joins, then admits from the room
    await d.getByRole('button', { name: 'Join consultation' }).click();
    await d.locator('.grid:not([hidden])').waitFor();
    await expectSoon('the banner stays in the room', () => banner.locator('.waiting-row', { hasText: 'Pat Smith is waiting' }).waitFor());
    await shot(d, '5-doctor-room-banner');
    await banner.getByRole('button', { name: 'Admit Pat Smith' }).click();

    for (const [who, page] of [['patient', p], ['doctor', d]]) {
      const started = Date.now();
      await expectSoon(`${who} sees the other's video`, async () => {
        await page.waitForFunction(() => {
          const v = document.querySelector('.tile:not(.tile-local) video');
          return v && v.videoWidth > 0 && !v.paused;
        }, null, { timeout: 20000 });
        const peer = await page.evaluate(() => document.querySelector('.tile:not(.tile-local) video').closest('.tile').querySelector('.tile-name').textContent);
        log(`${who} sees ${peer} after ${Date.now() - started} ms`);
      });
    }
    await expectSoon('the waiting screen is gone', () => p.locator('.waiting-screen').waitFor({ state: 'detached' }));
    await expectSoon('the banner is gone', () => banner.waitFor({ state: 'hidden' }));
    await expectSoon('the list line is gone', () => list.locator(`${row} .waiting-badge`).waitFor({ state: 'hidden', timeout: 10000 }));
    const title = await list.evaluate(() => document.title);
    if (title.startsWith('(')) fail(`the list's title still counts someone: "${title}"`);
    await shot(p, '6-patient-admitted');
    await shot(d, '7-doctor-admitted');

    // --- stored and audited
    const trail = await http('GET', `/api/admin/audit?appointmentId=${created.id}`, await token(admin));
    const actions = trail.records.map((r) => r.action).filter((a) => a.startsWith('waiting.'));
    const expected = ['waiting.entered', 'waiting.declined', 'waiting.entered', 'waiting.admitted'];
    if (JSON.stringify(actions) !== JSON.stringify(expected)) fail(`audit trail: ${JSON.stringify(actions)}, expected ${JSON.stringify(expected)}`);
    const admitted = trail.records.find((r) => r.action === 'waiting.admitted');
    if (!admitted || admitted.actorId !== doctor.sub) fail(`the admission's actor is the doctor: ${JSON.stringify(admitted)}`);
  } finally {
    await browser.close();
  }
  if (failures.length) {
    console.error(`\n${failures.length} failure(s):\n- ${failures.join('\n- ')}`);
    process.exit(1);
  }
  log(`all good; screenshots in ${outDir}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
