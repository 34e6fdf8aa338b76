// The waiting room (consult.waiting_room). A patient who opens the consultation before the doctor
// has let them in waits ("Waiting for Dr X to let you in", Cancel); the doctor sees "Pat Smith is
// waiting" on the appointment list and in the room, with a short sound and, when the page is not
// in front, a browser notification, and admits or declines.
//
// Server side (docs/protocol.md, "Waiting room"): `join-room` acks `{ok, waiting:true, selfId}`
// for a patient who must wait; `admitted {appointmentId, ...the join ack's fields}` or `declined
// {appointmentId, reason}` follows. Every socket of the doctor gets `waiting-room {appointmentId,
// waiting:[{userId, name, socketId, since}]}` on every change (and on connecting); the doctor
// emits `admit {appointmentId, userId}` / `decline {appointmentId, userId}`.

import { ask, tell, SignalError } from './signaling.js';
import { h, clear, formatTime, toast } from './ui.js';

// ---------------------------------------------------------------- who waits (hosts)

/** appointmentId -> [{userId, name, socketId, since}] as the server last said. */
const lobbies = new Map();
const subscribers = new Set();
let trackedSocket = null;

/**
 * Keeps the lists the server sends this session's socket (the doctor's, or an admin's in a room).
 * Called once per socket by app.js; a new socket starts from what the server tells it.
 */
export function trackWaiting(socket) {
  if (trackedSocket === socket) return;
  trackedSocket = socket;
  lobbies.clear();
  socket.on('waiting-room', ({ appointmentId, waiting } = {}) => {
    if (typeof appointmentId !== 'string' || !Array.isArray(waiting)) return;
    const before = new Set((lobbies.get(appointmentId) || []).map((w) => w.socketId));
    if (waiting.length) lobbies.set(appointmentId, waiting);
    else lobbies.delete(appointmentId);
    const arrived = waiting.filter((w) => !before.has(w.socketId));
    for (const fn of [...subscribers]) fn(appointmentId, waiting, arrived);
    updateTitle();
  });
  // Reconnected: the server sends the lists again; what we had may be stale.
  socket.on('disconnect', () => {
    const had = [...lobbies.keys()];
    lobbies.clear();
    for (const id of had) for (const fn of [...subscribers]) fn(id, [], []);
    updateTitle();
  });
}

/** Who waits for `appointmentId` now. */
export function waitingFor(appointmentId) {
  return lobbies.get(appointmentId) || [];
}

function subscribe(fn) {
  subscribers.add(fn);
  return () => subscribers.delete(fn);
}

/** "Pat Smith is waiting", "Pat Smith and Kim Lee are waiting", "Pat Smith and 2 others are waiting". */
export function waitingText(waiting) {
  const names = [...new Set(waiting.map((w) => w.name || w.userId))];
  if (names.length === 0) return '';
  if (names.length === 1) return `${names[0]} is waiting`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are waiting`;
  return `${names[0]} and ${names.length - 1} others are waiting`;
}

let baseTitle = null;

/** "(1) callrelay": the tab says someone waits, whichever page is open. */
function updateTitle() {
  if (baseTitle === null) baseTitle = document.title;
  const count = [...lobbies.values()].reduce((n, list) => n + new Set(list.map((w) => w.userId)).size, 0);
  document.title = count ? `(${count}) ${baseTitle}` : baseTitle;
}

// ---------------------------------------------------------------- sound and notifications

let audio = null;

/** A short two-note chime (WebAudio). Silent where the browser allows no sound yet. */
export function chime() {
  try {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    audio = audio || new Ctx();
    if (audio.state === 'suspended') audio.resume().catch(() => {});
    const t0 = audio.currentTime + 0.02;
    [[659.25, 0], [987.77, 0.16]].forEach(([freq, at]) => {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = 'sine';
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.0001, t0 + at);
      gain.gain.exponentialRampToValueAtTime(0.18, t0 + at + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t0 + at + 0.35);
      osc.connect(gain).connect(audio.destination);
      osc.start(t0 + at);
      osc.stop(t0 + at + 0.4);
    });
  } catch {
    // No sound: the banner and the title still say it.
  }
}

/** A browser notification, only when the page is not in front and the user allowed them. */
export function notify(title, body, tag) {
  if (!('Notification' in window) || Notification.permission !== 'granted') return;
  if (document.visibilityState === 'visible' && document.hasFocus()) return;
  try {
    const n = new Notification(title, { body, tag, renotify: true });
    n.onclick = () => {
      window.focus();
      n.close();
    };
  } catch {
    // Some browsers allow notifications only from a service worker: the sound and title remain.
  }
}

/**
 * "Alert me when patients wait": asks for notification permission on a click (browsers allow
 * the prompt only then) and unlocks the sound. Shows nothing once allowed or when the browser
 * refused before; says so when the answer to its question is no.
 */
export function alertsButton() {
  const supported = 'Notification' in window;
  const el = h('div', { class: 'waiting-alerts' });
  let asked = false;
  const render = () => {
    clear(el);
    const permission = supported ? Notification.permission : 'unsupported';
    if (permission === 'granted' || (!asked && permission !== 'default')) {
      // Allowed, or refused before (the browser's own setting): nothing to offer.
      el.hidden = true;
    } else if (permission === 'default') {
      el.hidden = false;
      el.appendChild(h('button', {
        class: 'small', type: 'button',
        onclick: async () => {
          chime(); // the click also lets the page play sound
          asked = true;
          try {
            await Notification.requestPermission();
          } catch {
            // Older browsers: a callback API, or none; the sound is enough.
          }
          render();
        },
      }, 'Alert me when a patient is waiting'));
    } else {
      el.hidden = false;
      el.appendChild(h('p', { class: 'muted small-print' }, permission === 'denied'
        ? 'Browser notifications are blocked for this site; you will still hear a sound and see who is waiting here.'
        : 'This browser shows no notifications; you will still hear a sound and see who is waiting here.'));
    }
  };
  render();
  return el;
}

/** Sound and notification for hosts when someone starts waiting (any page of the app). */
function alertArrivals(appointmentId, waiting, arrived) {
  if (!arrived.length) return;
  chime();
  notify(waitingText(arrived), 'Open callrelay to let them in.', `callrelay-waiting-${appointmentId}`);
}

let alerting = false;

/** Turns on the chime and notifications for hosts (doctors and admins), once per page load. */
export function alertHosts(me) {
  if (alerting || !me || (me.role !== 'doctor' && me.role !== 'admin')) return;
  alerting = true;
  subscribe(alertArrivals);
}

// ---------------------------------------------------------------- the appointment list

/**
 * The line under an appointment of the list when someone waits: "Pat Smith is waiting · since
 * 10:02" and an Admit button that opens the room and lets them in once the doctor has joined.
 * Updates itself; empty (hidden) when nobody waits.
 */
export function waitingBadge(appointment, navigate) {
  const el = h('div', { class: 'waiting-badge', role: 'status', 'aria-live': 'polite', hidden: true });
  const render = (waiting) => {
    clear(el);
    el.hidden = waiting.length === 0;
    if (!waiting.length) return;
    const first = waiting[0];
    el.append(
      h('span', { class: 'waiting-dot', 'aria-hidden': 'true' }),
      h('strong', {}, waitingText(waiting)),
      h('span', { class: 'muted' }, ` · since ${formatTime(first.since)}`),
      h('button', {
        class: 'small primary',
        type: 'button',
        'aria-label': `Admit ${first.name}: open the consultation`,
        onclick: () => {
          admitOnJoin(appointment.id, first.userId);
          navigate(appointment.joinUrl || `/consult/${encodeURIComponent(appointment.id)}`);
        },
      }, 'Admit'));
  };
  render(waitingFor(appointment.id));
  const unsubscribe = subscribe((id, waiting) => {
    if (!el.isConnected && el.dataset.shown) {
      unsubscribe();
      return;
    }
    if (id === appointment.id) render(waiting);
  });
  // Once on the page, the badge lives as long as its row.
  requestAnimationFrame(() => {
    el.dataset.shown = '1';
  });
  return el;
}

const ADMIT_KEY = 'callrelay.admitOnJoin';

/** Remembers to admit `userId` once the doctor has joined the room (Admit on the list). */
function admitOnJoin(appointmentId, userId) {
  sessionStorage.setItem(ADMIT_KEY, JSON.stringify({ appointmentId, userId, at: Date.now() }));
}

function takeAdmitOnJoin(appointmentId) {
  try {
    const pending = JSON.parse(sessionStorage.getItem(ADMIT_KEY) || 'null');
    if (!pending || pending.appointmentId !== appointmentId) return null;
    sessionStorage.removeItem(ADMIT_KEY);
    return Date.now() - pending.at < 10 * 60 * 1000 ? pending.userId : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- in the room: the host's banner

/**
 * The banner over the consult page for its hosts: who waits, Admit / Decline each. Admitting
 * while still in the lobby joins first (`join()`, the page's Join). Returns {el, joined(),
 * dispose()}: `joined()` is called once the host is in the room (an Admit from the list is
 * carried out then).
 */
export function hostBanner({ socket, appointmentId, join, isJoined, onError }) {
  const el = h('section', { class: 'waiting-banner', 'aria-label': 'Waiting room', hidden: true });
  const list = h('ul', { class: 'waiting-list' });
  const live = h('p', { class: 'sr-only', role: 'status', 'aria-live': 'polite' });
  const alerts = alertsButton();
  el.append(live, list, alerts);
  let pending = takeAdmitOnJoin(appointmentId);
  let shownSockets = new Set();

  const act = async (event, w, button) => {
    button.disabled = true;
    try {
      if (event === 'admit' && !isJoined()) await join();
      if (event === 'admit' && !isJoined()) return; // the join failed: the page says why
      await ask(socket, event, { appointmentId, userId: w.userId });
      if (event === 'decline') toast(`${w.name} was not let in.`, 'info');
    } catch (err) {
      if (err instanceof SignalError && err.code === 'not_found') {
        toast(`${w.name} is no longer waiting.`, 'info');
      } else {
        onError(`Could not ${event} ${w.name}: ${err.message}`);
      }
    } finally {
      button.disabled = false;
    }
  };

  const render = (waiting) => {
    clear(list);
    el.hidden = waiting.length === 0;
    // One row per person (a patient on two devices is one person: admitting lets both in).
    const people = [];
    for (const w of waiting) if (!people.some((p) => p.userId === w.userId)) people.push(w);
    for (const w of people) {
      const admit = h('button', { class: 'small primary', type: 'button', 'aria-label': `Admit ${w.name}` }, 'Admit');
      const decline = h('button', { class: 'small danger-outline', type: 'button', 'aria-label': `Decline ${w.name}` }, 'Decline');
      admit.addEventListener('click', () => act('admit', w, admit));
      decline.addEventListener('click', () => act('decline', w, decline));
      list.appendChild(h('li', { class: 'waiting-row', dataset: { userId: w.userId } },
        h('span', { class: 'waiting-dot', 'aria-hidden': 'true' }),
        h('span', { class: 'waiting-who' }, h('strong', {}, `${w.name} is waiting`),
          h('span', { class: 'muted' }, ` · since ${formatTime(w.since)}`)),
        h('span', { class: 'waiting-actions' }, admit, decline)));
    }
    const now = new Set(waiting.map((w) => w.socketId));
    const arrived = waiting.filter((w) => !shownSockets.has(w.socketId));
    if (arrived.length) live.textContent = `${waitingText(arrived)} to be let in.`;
    shownSockets = now;
  };

  const admitPending = () => {
    if (!pending || !isJoined()) return;
    const w = waitingFor(appointmentId).find((x) => x.userId === pending);
    pending = null;
    if (w) ask(socket, 'admit', { appointmentId, userId: w.userId }).catch((err) => onError(`Could not admit ${w.name}: ${err.message}`));
  };

  render(waitingFor(appointmentId));
  const unsubscribe = subscribe((id, waiting) => {
    if (id !== appointmentId) return;
    render(waiting);
    admitPending();
  });
  if (pending) {
    const w = waitingFor(appointmentId).find((x) => x.userId === pending);
    if (w) live.textContent = `${w.name} will be let in when you join.`;
  }
  return {
    el,
    joined: () => admitPending(),
    dispose: () => unsubscribe(),
  };
}

// ---------------------------------------------------------------- the patient's waiting screen

/** What `awaitAdmission` rejects with when the patient cancels (nothing to report). */
export class WaitCancelled extends Error {
  constructor() {
    super('You left the waiting room.');
    this.code = 'cancelled';
  }
}

/**
 * The patient waits: a waiting screen over the consult page's stage ("Waiting for Dr X to let
 * you in", Cancel). Resolves with the `admitted` payload (the join ack's fields), or rejects:
 * `declined` (code 'declined', the doctor's reason in the message), Cancel (`WaitCancelled`).
 * After a reconnection of the socket it asks again (`reknock`), naming the socket it waited
 * with, so it keeps its place. `signal` aborted (the page closes): it leaves the waiting room.
 */
export function awaitAdmission({ socket, ack, joinPayload, host, hostName, reknock = true, signal }) {
  const appointmentId = ack.appointmentId;
  let selfId = ack.selfId;
  const who = hostName || 'the doctor';
  const since = h('span', {}, formatTime(ack.since));
  const cancel = h('button', { class: 'big', type: 'button' }, 'Leave the waiting room');
  const status = h('p', { class: 'waiting-status', role: 'status', 'aria-live': 'polite' },
    'They have been told you are here. You will join automatically as soon as they let you in.');
  const screen = h('div', { class: 'waiting-screen' },
    h('div', { class: 'waiting-pulse', 'aria-hidden': 'true' }),
    h('h2', {}, `Waiting for ${who} to let you in`),
    status,
    h('p', { class: 'muted' }, 'Waiting since ', since, '. Keep this page open; you will hear a sound when you are let in.'),
    cancel);
  host.dataset.waiting = '1';
  host.prepend(screen);
  cancel.focus();

  return new Promise((resolve, reject) => {
    let settled = false;
    const done = () => {
      settled = true;
      if (signal) signal.removeEventListener('abort', leave);
      socket.off('admitted', onAdmitted);
      socket.off('declined', onDeclined);
      socket.off('connect', onReconnect);
      screen.remove();
      delete host.dataset.waiting;
    };
    const onAdmitted = (payload = {}) => {
      if (payload.appointmentId !== appointmentId) return;
      done();
      chime();
      notify(`${who} let you in`, 'Your consultation is starting.', `callrelay-admitted-${appointmentId}`);
      resolve(payload);
    };
    const onDeclined = ({ appointmentId: id, reason } = {}) => {
      if (id !== appointmentId) return;
      done();
      reject(new SignalError('declined', reason
        ? `${who} could not let you in: ${reason}`
        : `${who} could not let you in right now. You can ask again.`, 'join-room'));
    };
    const onReconnect = async () => {
      if (!reknock) return;
      status.textContent = 'Reconnected; still waiting.';
      try {
        const again = await ask(socket, 'join-room', { ...joinPayload, previousSocketId: selfId });
        if (!again.waiting) {
          // Let in meanwhile (or the waiting room was turned off): a normal join.
          done();
          resolve(again);
          return;
        }
        selfId = again.selfId;
        since.textContent = formatTime(again.since);
      } catch (err) {
        done();
        reject(err);
      }
    };
    socket.on('admitted', onAdmitted);
    socket.on('declined', onDeclined);
    socket.on('connect', onReconnect);
    function leave() {
      if (settled) return;
      done();
      tell(socket, 'leave-room', {});
      reject(new WaitCancelled());
    }
    cancel.addEventListener('click', leave);
    if (signal) {
      if (signal.aborted) leave();
      else signal.addEventListener('abort', leave, { once: true });
    }
  });
}
