#!/usr/bin/env node
// Issue 14 in headless Chromium: every page of the web client fits a phone and a desktop screen
// and passes an axe-core scan; direct calls, refusals and the call history name people, not
// ids; toasts and the call dock leave the room's controls and the Call button uncovered.
//
//   node web/smoke-phone-a11y.mjs [BASE_URL] [--out DIR] [--sizes phone,desktop]
//
// For each size (phone: 390x844, a touch screen; desktop: 1280x800), a doctor and a patient
// (two browser contexts, fake camera/microphone) walk: sign-in, appointment list, call history,
// consult lobby, the consult room together (chat: a drawer on the phone), a toast when the
// patient leaves, an incoming-call banner and the caller's call dock, a call the patient
// declines ("Pat Smith declined the call.", the history saying "Declined" without a media path),
// then a call the doctor answers from the history page, which shows it by itself once it has
// ended ("Ended · …", "Direct (P2P)"). On every page: `scrollWidth <= innerWidth`, no axe
// violation of impact serious or critical, and a screenshot DIR/issue14-<size>-<step>.png.
//
// Needs playwright-core and axe-core (npm ci --prefix tests/node; NODE_PATH=tests/node/node_modules)
// and Chromium (CHROMIUM=/path overrides /usr/bin/chromium). The server must serve web/ and have
// auth.dev_tokens on; tests/browser_client.rs runs this.

import { mkdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

import { failureLog, httpClient, launchChromium, loadPlaywright, options } from './smoke-kit.mjs';

const args = process.argv.slice(2);
const opt = options(args);
const outDir = opt('--out', '/tmp');
const sizes = opt('--sizes', 'phone,desktop').split(',');
const base = (args[0] || 'http://127.0.0.1:3999').replace(/\/$/, '');

const SIZES = {
  phone: { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true },
  desktop: { viewport: { width: 1280, height: 800 } },
};

const log = (...m) => console.log(`[phone-a11y ${new Date().toISOString().slice(11, 23)}]`, ...m);
const http = httpClient(base);
const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

const { failures, fail, expectSoon } = failureLog(log);

/**
 * What a user would check on this page: nothing wider than the screen, no serious or critical
 * axe violation; then a screenshot.
 */
async function check(page, size, step) {
  await page.waitForTimeout(150); // let layout settle after the last change
  const widths = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    body: document.body.scrollWidth,
    inner: window.innerWidth,
  }));
  const expected = SIZES[size].viewport.width;
  if (widths.scroll > widths.inner || widths.body > widths.inner || widths.inner !== expected) {
    const wide = await page.evaluate((inner) => [...document.querySelectorAll('body *')]
      .filter((el) => el.getBoundingClientRect().right > inner + 0.5 && el.getClientRects().length)
      .slice(0, 5)
      .map((el) => `${el.tagName.toLowerCase()}.${[...el.classList].join('.')} right=${Math.round(el.getBoundingClientRect().right)}`), widths.inner);
    fail(`${size} ${step}: the page is wider than the screen (scrollWidth ${widths.scroll}, body ${widths.body}, innerWidth ${widths.inner}, screen ${expected}): ${wide.join(', ')}`);
  }
  if (!(await page.evaluate(() => !!window.axe))) await page.evaluate(axeSource);
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, { resultTypes: ['violations'] });
    const said = (v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(' | ')}`;
    return {
      serious: result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical').map(said),
      lesser: result.violations.filter((v) => v.impact !== 'serious' && v.impact !== 'critical').map(said),
    };
  });
  for (const v of violations.serious) fail(`${size} ${step}: axe ${v}`);
  for (const v of violations.lesser) log(`${size} ${step}: axe (not failing) ${v}`);
  const file = path.join(outDir, `issue14-${size}-${step}.png`);
  await page.screenshot({ path: file });
  await checkKeyboard(page, size, step);
  log(`${size} ${step}: width ${widths.scroll}/${widths.inner}, axe: ${violations.serious.length} serious/critical, ${path.basename(file)}`);
}

/**
 * Every control on the page is reached with Tab, shows a visible focus ring when it is, and has
 * a name: Tab until focus comes round to a control it reached before, then list the visible,
 * enabled controls it never reached. Leaves focus where it was.
 */
async function checkKeyboard(page, size, step) {
  const before = await page.evaluateHandle(() => document.activeElement);
  const seen = [];
  let outside = 0; // presses that left focus on no control (past the end of the page)
  for (let i = 0; i < 120; i++) {
    await page.keyboard.press('Tab');
    const now = await page.evaluate((n) => {
      const el = document.activeElement;
      if (!el || el === document.body) return null;
      // Tab inside one control (the fields of a date input) is not a new control, nor the end.
      if (el.getAttribute('data-kb') === String(n - 1)) return { inside: true };
      const first = !el.hasAttribute('data-kb');
      el.setAttribute('data-kb', String(n));
      const style = getComputedStyle(el);
      const ring = style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2;
      const name = (el.getAttribute('aria-label') || el.labels?.[0]?.textContent || el.textContent || el.getAttribute('title') || '').trim();
      return { first, ring, name, what: `${el.tagName.toLowerCase()}${el.className ? '.' + String(el.className).split(' ').join('.') : ''}` };
    }, seen.length);
    if (!now) {
      if (++outside > 3) break;
      continue;
    }
    if (now.inside) continue;
    if (!now.first) break; // round again to where the walk started
    seen.push(now);
    if (!now.ring) fail(`${size} ${step}: ${now.what} "${now.name}" shows no focus ring`);
    if (!now.name) fail(`${size} ${step}: ${now.what} has no name`);
  }
  const missed = await page.evaluate(() => {
    const controls = document.querySelectorAll('button, a[href], input:not([type="hidden"]), select, textarea, summary, [tabindex="0"]');
    const out = [];
    for (const el of controls) {
      const visible = el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden' && !el.closest('[inert], details:not([open]) > :not(summary)');
      const radioOff = el.type === 'radio' && !el.checked;
      if (visible && !el.disabled && !radioOff && !el.hasAttribute('data-kb')) {
        out.push(`${el.tagName.toLowerCase()} "${(el.getAttribute('aria-label') || el.textContent || el.name || '').trim().slice(0, 30)}"`);
      }
    }
    for (const el of document.querySelectorAll('[data-kb]')) el.removeAttribute('data-kb');
    return out;
  });
  for (const m of missed) fail(`${size} ${step}: ${m} cannot be reached with the keyboard`);
  await page.evaluate((el) => el && el !== document.body && el.focus({ preventScroll: true }), before);
  return seen.length;
}

/** Toasts and the call dock must not lie over the room's controls, Send, or the Call button. */
async function assertUncovered(page, size, step) {
  const overlaps = await page.evaluate(() => {
    const visible = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
    const targets = [...document.querySelectorAll('.controls button, .chat-form button, .call-box button[type="submit"]')].filter(visible);
    const covers = [...document.querySelectorAll('.toast, .call-dock')].filter(visible);
    const out = [];
    for (const t of targets) {
      const a = t.getBoundingClientRect();
      for (const c of covers) {
        const b = c.getBoundingClientRect();
        if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) {
          out.push(`"${c.textContent.trim().slice(0, 40)}" covers the button "${t.textContent.trim()}"`);
        }
      }
    }
    return { out, targets: targets.length, covers: covers.length };
  });
  for (const o of overlaps.out) fail(`${size} ${step}: ${o}`);
  return overlaps;
}

/** The button is on the screen (not off its right edge or below it) and nothing lies over it. */
async function assertReachable(page, size, step, locator, label) {
  const box = await locator.boundingBox();
  const vp = page.viewportSize();
  if (!box) {
    fail(`${size} ${step}: ${label} is not shown`);
    return;
  }
  if (box.x < 0 || box.x + box.width > vp.width + 0.5 || box.y < 0 || box.y + box.height > vp.height + 0.5) {
    fail(`${size} ${step}: ${label} is off-screen (${JSON.stringify(box)} in ${vp.width}x${vp.height})`);
  }
}

async function walk(browser, size, who) {
  const { doctor, patient, appointment } = who;
  const pages = {};
  const contexts = [];
  for (const role of ['doctor', 'patient']) {
    const context = await browser.newContext(SIZES[size]);
    contexts.push(context);
    await context.grantPermissions(['camera', 'microphone'], { origin: base });
    const page = await context.newPage();
    page.on('pageerror', (e) => fail(`${size} ${role} page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') log(`${size} ${role} console.error: ${m.text()}`);
    });
    pages[role] = page;
  }
  const d = pages.doctor;
  const p = pages.patient;
  try {
    // --- sign-in, appointment list, (empty) call history
    await d.goto(`${base}/`);
    await d.getByLabel('User id').waitFor();
    await check(d, size, '01-signin');
    await d.getByLabel('User id').fill(doctor.sub);
    await d.getByLabel('Display name').fill(doctor.name);
    await d.getByLabel('Role').selectOption('doctor');
    await d.getByRole('button', { name: 'Sign in' }).click();
    await d.locator(`.appt[data-id="${appointment}"]`).waitFor();
    await check(d, size, '02-appointments');
    await d.getByRole('link', { name: 'Call history', exact: true }).click();
    await d.getByRole('heading', { name: 'Call history' }).waitFor();
    await d.locator('.calls-table').or(d.getByText('No calls yet.')).waitFor();
    await check(d, size, '03-history');

    // --- the consult lobby (patient by token), then the room with the doctor
    await p.addInitScript((token) => sessionStorage.setItem('callrelay.token', token), patient.token);
    await p.goto(`${base}/consult/${appointment}`);
    const pJoin = p.getByRole('button', { name: 'Join consultation' });
    await pJoin.waitFor();
    await p.waitForFunction(() => [...document.querySelectorAll('button')].some((b) => /Join consultation/.test(b.textContent) && !b.disabled));
    await check(p, size, '04-lobby');
    await pJoin.click();
    await d.getByRole('link', { name: 'Appointments', exact: true }).click();
    await d.locator(`.appt[data-id="${appointment}"] a`, { hasText: 'Join' }).click();
    await d.getByRole('button', { name: 'Join consultation' }).click();
    for (const [role, page] of Object.entries(pages)) {
      await expectSoon(`${size}: the ${role} sees the other's video in the room`, () => page.waitForFunction(
        () => [...document.querySelectorAll('.tile:not(.tile-local) video')].some((v) => v.videoWidth > 0),
        null,
        { timeout: 20000 },
      ));
    }
    await check(p, size, '05-room');
    await assertReachable(p, size, 'room', p.getByRole('button', { name: 'Leave' }), 'Leave');

    // --- chat: a drawer on the phone (its toggle counts what came while closed), beside the room on a desktop
    const drawer = size === 'phone';
    if (drawer) {
      await expectSoon(`${size}: the chat is hidden behind its toggle`, async () => {
        if (await p.locator('.chat').isVisible()) throw new Error('the chat is shown beside the room on a phone');
      });
      await p.getByRole('button', { name: 'Chat', exact: true }).click();
    }
    const text = `Hello from ${size}`;
    await p.getByLabel('Message').fill(text);
    await assertReachable(p, size, 'chat', p.getByRole('button', { name: 'Send' }), 'Send');
    await check(p, size, '06-chat');
    await p.getByRole('button', { name: 'Send' }).click();
    await expectSoon(`${size}: the patient's message is shown to the patient`, () => p.locator('.message-text', { hasText: text }).waitFor({ timeout: 5000 }));
    if (drawer) {
      await expectSoon(`${size}: the doctor's closed chat counts one unread message`, () => d.getByRole('button', { name: 'Chat, 1 unread' }).waitFor({ timeout: 5000 }));
      await p.keyboard.press('Escape');
      await expectSoon(`${size}: Escape closes the drawer and gives focus back to its toggle`, () => p.waitForFunction(
        () => document.activeElement && document.activeElement.classList.contains('chat-toggle')
          && document.activeElement.getAttribute('aria-expanded') === 'false',
        null,
        { timeout: 2000 },
      ));
      await d.getByRole('button', { name: 'Chat, 1 unread' }).click();
    }
    await expectSoon(`${size}: the doctor reads the patient's message`, () => d.locator('.message-text', { hasText: text }).waitFor({ timeout: 5000 }));
    if (drawer) await d.getByRole('button', { name: 'Close the chat' }).click();

    // --- the patient leaves: the doctor's toast must not cover the room's controls
    await p.getByRole('button', { name: 'Leave' }).click();
    await expectSoon(`${size}: the doctor is told the patient left`, () => d.locator('.toast', { hasText: patient.name }).waitFor({ timeout: 5000 }));
    const covered = await assertUncovered(d, size, 'toast in the room');
    if (covered.covers === 0) fail(`${size}: no toast was shown when the patient left`);
    await check(d, size, '07-toast');

    // --- a call the patient declines
    await p.getByRole('link', { name: 'Appointments', exact: true }).click();
    await p.locator(`.appt[data-id="${appointment}"]`).waitFor();
    await d.getByRole('link', { name: 'Appointments', exact: true }).click();
    await d.locator(`.appt[data-id="${appointment}"] button`, { hasText: 'Call patient' }).click();
    const banner = p.locator('.ringing');
    if (await expectSoon(`${size}: the patient sees the incoming call`, () => banner.waitFor({ timeout: 10000 }))) {
      const said = (await banner.innerText()).replace(/\s+/g, ' ');
      if (!said.includes(doctor.name) || said.includes(doctor.sub)) fail(`${size}: the banner should name ${doctor.name}, not an id: "${said}"`);
      await check(p, size, '08-incoming');
    }
    await expectSoon(`${size}: the doctor's dock says whom it rings`, () => d.locator('.call-dock .call-status', { hasText: `Ringing ${patient.name}` }).waitFor({ timeout: 5000 }));
    await assertUncovered(d, size, 'call dock');
    await check(d, size, '09-calling');
    await banner.getByRole('button', { name: 'Decline' }).click();
    const declined = `${patient.name} declined the call.`;
    if (await expectSoon(`${size}: the doctor reads "${declined}"`, () => d.locator('.call-dock .call-status', { hasText: declined }).waitFor({ timeout: 5000 }))) {
      const status = await d.locator('.call-dock .call-status').innerText();
      if (status.includes(patient.sub)) fail(`${size}: the refusal shows an id: "${status}"`);
      await assertUncovered(d, size, 'declined dock');
      await check(d, size, '10-declined');
    }

    // --- the history: the name, "Declined", no media path
    await d.getByRole('link', { name: 'Call history', exact: true }).click();
    const first = d.locator('.calls-table tbody tr').first();
    await expectSoon(`${size}: the declined call is in the history`, () => first.waitFor({ timeout: 5000 }));
    const row = (await first.innerText()).replace(/\s+/g, ' ');
    log(`${size} history: ${row}`);
    if (!row.includes(patient.name) || row.includes(patient.sub)) fail(`${size}: the history should name ${patient.name}, not an id: "${row}"`);
    if (!/Declined/.test(row)) fail(`${size}: the history should say "Declined": "${row}"`);
    if (/P2P|Relay|Direct/i.test(row)) fail(`${size}: a declined call shows a media path: "${row}"`);
    await check(d, size, '11-history-declined');

    // --- the patient calls back; the doctor answers on the history page, which updates itself
    await p.locator(`.appt[data-id="${appointment}"] button`, { hasText: 'Call doctor' }).click();
    const dBanner = d.locator('.ringing');
    await expectSoon(`${size}: the doctor sees the patient's call`, () => dBanner.waitFor({ timeout: 10000 }));
    await dBanner.getByRole('button', { name: 'Answer' }).click();
    for (const [role, page] of Object.entries(pages)) {
      await expectSoon(`${size}: the ${role} sees the other's video in the call`, () => page.waitForFunction(
        () => [...document.querySelectorAll('.call-dock:not(.ended) video.call-remote')].some((v) => v.videoWidth > 0),
        null,
        { timeout: 20000 },
      ));
    }
    await assertUncovered(p, size, 'call dock in a call');
    await check(p, size, '12-in-call');
    await p.locator('.call-dock').getByRole('button', { name: 'Hang up' }).click();
    await expectSoon(`${size}: the doctor is told ${patient.name} hung up`, () => d.locator('.call-dock .call-status', { hasText: `${patient.name} hung up` }).waitFor({ timeout: 5000 }));
    await expectSoon(`${size}: the history shows the answered call by itself, with its length and path`, () => d.waitForFunction(
      (name) => {
        const row = document.querySelector('.calls-table tbody tr');
        return row && row.textContent.includes(name) && /Ended · \d+ s/.test(row.textContent) && /Direct \(P2P\)/.test(row.textContent);
      },
      patient.name,
      { timeout: 8000 },
    ));
    log(`${size} history after the call: ${(await first.innerText()).replace(/\s+/g, ' ')}`);
    await check(d, size, '13-history-ended');
  } finally {
    for (const context of contexts) await context.close().catch(() => {});
  }
}

async function main() {
  const { chromium } = await loadPlaywright();
  mkdirSync(outDir, { recursive: true });
  const started = Date.now();
  const browser = await launchChromium(chromium, base);
  try {
    for (const size of sizes) {
      if (!SIZES[size]) throw new Error(`--sizes: unknown size ${size}`);
      const run = Math.random().toString(36).slice(2, 6);
      const doctor = { sub: `doc-${run}`, name: 'Dr Ada Lovelace', role: 'doctor' };
      const patient = { sub: `pat-${run}`, name: 'Pat Smith', role: 'patient' };
      patient.token = (await http('POST', '/api/dev/token', null, patient)).token;
      const doctorToken = (await http('POST', '/api/dev/token', null, doctor)).token;
      const created = await http('POST', '/api/appointments', doctorToken, {
        patientId: patient.sub,
        doctorId: doctor.sub,
        scheduledAt: new Date(Date.now() + 15 * 60 * 1000).toISOString(),
        patientName: patient.name,
        doctorName: doctor.name,
      });
      await http('POST', `/api/appointments/${created.id}/confirm`, doctorToken);
      await walk(browser, size, { doctor, patient, appointment: created.id });
    }
  } finally {
    await browser.close();
  }
  log(`done in ${((Date.now() - started) / 1000).toFixed(1)} s, screenshots in ${outDir}`);
  if (failures.length) {
    console.error(`\n${failures.length} failure(s):\n- ${failures.join('\n- ')}`);
    process.exit(1);
  }
  console.log('OK: every page fits the screen and passes axe; calls and history name people');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
