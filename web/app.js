// callrelay web client: sign-in, appointments, consult rooms, direct calls. No build step.

import { api, getToken, setToken, hooks, ApiError } from './api.js';
import { connect } from './signaling.js';
import { h, clear, avatar, showError, formatDateTime, toast } from './ui.js';
import { renderConsult } from './consult.js';
import { CallManager, callBox, renderCallHistory } from './calls.js';
import { trackWaiting, alertHosts, waitingBadge, alertsButton } from './waiting.js';

const viewRoot = document.getElementById('view');
const userHost = document.getElementById('user');
const navHost = document.getElementById('nav');
const bannerHost = document.getElementById('ringing');
const dockHost = document.getElementById('call-dock');

const session = {
  me: null,
  socket: null,
  calls: null,
  relayRoutes: new Map(), // roomId (appointment or call id) -> {relayActivated, subscribeOffer, candidate}
  disposeView: null,
  signInMessage: null,
};

// ---------------------------------------------------------------- routing

export function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', path);
  else if (path !== location.pathname) history.pushState(null, '', path);
  render();
}

document.addEventListener('click', (e) => {
  const a = e.target.closest('a[data-link]');
  if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin) return;
  e.preventDefault();
  navigate(url.pathname);
  // As after a page load, the keyboard and screen readers start at the new page.
  if (!viewRoot.contains(document.activeElement)) viewRoot.focus({ preventScroll: true });
});

// The header wraps on narrow screens: what sits under it (ringing calls, toasts, the call dock,
// the chat drawer) is placed from its real height.
const topbar = document.querySelector('.topbar');
new ResizeObserver(() => {
  document.documentElement.style.setProperty('--topbar-h', `${topbar.offsetHeight}px`);
}).observe(topbar);
window.addEventListener('popstate', () => render());

function render() {
  if (session.disposeView) {
    const dispose = session.disposeView;
    session.disposeView = null;
    dispose();
  }
  clear(viewRoot);
  renderNav();
  if (!session.me) {
    session.disposeView = renderSignIn(viewRoot);
    return;
  }
  const path = location.pathname;
  const consult = path.match(/^\/consult\/([^/]+)\/?$/);
  const ctx = { socket: session.socket, me: session.me, relayRoutes: session.relayRoutes, navigate };
  if (consult) {
    document.title = 'Consultation — callrelay';
    session.disposeView = renderConsult(viewRoot, ctx, decodeURIComponent(consult[1]));
  } else if (path === '/calls') {
    document.title = 'Call history — callrelay';
    session.disposeView = renderCallHistory(viewRoot, ctx, session.calls);
  } else if (path === '/' || path === '/index.html') {
    document.title = 'callrelay';
    session.disposeView = renderHome(viewRoot, ctx);
  } else {
    viewRoot.appendChild(h('section', { class: 'card narrow' },
      h('h1', {}, 'Page not found'),
      h('p', {}, 'There is nothing at this address.'),
      h('a', { href: '/', dataset: { link: '' } }, 'Go to your appointments')));
  }
}

function renderNav() {
  clear(navHost);
  clear(userHost);
  if (!session.me) return;
  const here = location.pathname;
  navHost.append(
    h('a', { href: '/', dataset: { link: '' }, 'aria-current': here === '/' ? 'page' : null }, 'Appointments'),
    h('a', { href: '/calls', dataset: { link: '' }, 'aria-current': here === '/calls' ? 'page' : null }, 'Call history'));
  userHost.append(
    h('span', { class: 'conn', id: 'conn', role: 'img', 'aria-label': 'Connection to the server', dataset: { state: session.socket && session.socket.connected ? 'up' : 'down' }, title: 'Connection to the server' }),
    avatar(session.me.name, 'avatar-sm'),
    h('span', { class: 'who' }, h('strong', { title: session.me.name }, session.me.name), h('span', { class: 'role' }, session.me.role), h('span', { class: 'muted id' }, session.me.id)),
    h('button', { class: 'small', onclick: () => signOut() }, 'Sign out'));
}

function setConn(state, title) {
  const dot = document.getElementById('conn');
  if (dot) {
    dot.dataset.state = state;
    dot.title = title;
    dot.setAttribute('aria-label', title);
  }
}

// ---------------------------------------------------------------- session

async function signIn(token) {
  const me = await api('/api/me', { token });
  setToken(token);
  session.me = me;
  startSocket(token);
  render();
}

function startSocket(token) {
  const socket = connect(token);
  session.socket = socket;
  socket.on('connect', () => setConn('up', 'Connected'));
  socket.on('disconnect', (reason) => {
    setConn('down', `Disconnected (${reason}) — reconnecting…`);
    if (reason === 'io server disconnect') toast('The server closed the connection.', 'error');
  });
  // The server restarts for maintenance: what is under way goes on, nothing new starts. A
  // consult page says so in its own notices.
  socket.on('server-draining', () => {
    if (!/^\/consult\//.test(location.pathname)) {
      toast('This server is restarting for maintenance; calls in progress continue.', 'info', 10000);
    }
  });
  socket.on('connect_error', (err) => {
    if (err && err.message === 'unauthorized') {
      signOut('Your sign-in is no longer valid (expired, or the server restarted with a new secret). Please sign in again.');
    } else {
      setConn('down', `Cannot reach the server (${err.message}) — retrying…`);
    }
  });
  // The relay speaks per room (appointment or call id): hand each event to whoever owns the room.
  socket.on('relay-activated', ({ roomId, reason } = {}) => session.relayRoutes.get(roomId)?.relayActivated(reason));
  socket.on('sfu-subscribe-offer', ({ roomId, sdp } = {}) => session.relayRoutes.get(roomId)?.subscribeOffer(sdp));
  socket.on('sfu-candidate', ({ roomId, pc, candidate } = {}) => session.relayRoutes.get(roomId)?.candidate(pc, candidate));
  socket.on('active-speaker', ({ roomId, socketId } = {}) => session.relayRoutes.get(roomId)?.activeSpeaker?.(socketId));
  session.calls = new CallManager({ socket, me: session.me, relayRoutes: session.relayRoutes }, bannerHost, dockHost);
  // The waiting room: who waits for this doctor, with a sound and a notification on any page.
  trackWaiting(socket);
  alertHosts(session.me);
}

function signOut(message = null) {
  if (session.disposeView) {
    const dispose = session.disposeView;
    session.disposeView = null;
    dispose();
  }
  if (session.calls) session.calls.destroy();
  if (session.socket) session.socket.disconnect();
  session.calls = null;
  session.socket = null;
  session.me = null;
  session.signInMessage = message;
  setToken(null);
  render();
}

hooks.onUnauthorized = () => {
  if (session.me) signOut('Your sign-in is no longer valid. Please sign in again.');
};

// ---------------------------------------------------------------- sign-in

function renderSignIn(root) {
  const status = h('div', { class: 'form-status' });
  const idPattern = '[A-Za-z0-9._:\\-]{1,128}';
  const sub = h('input', { name: 'sub', required: true, autocomplete: 'username', pattern: idPattern, title: 'Letters, digits and . _ : - (no spaces)', placeholder: 'e.g. pat1' });
  const name = h('input', { name: 'name', required: true, autocomplete: 'name', placeholder: 'e.g. Pat Smith' });
  const role = h('select', { name: 'role' }, ['patient', 'doctor', 'staff', 'admin'].map((r) => h('option', { value: r }, r[0].toUpperCase() + r.slice(1))));
  const devBtn = h('button', { class: 'primary', type: 'submit' }, 'Sign in');
  const devForm = h('form', {
    class: 'stack',
    onsubmit: async (e) => {
      e.preventDefault();
      clear(status);
      devBtn.disabled = true;
      try {
        const { token } = await api('/api/dev/token', { method: 'POST', auth: false, body: { sub: sub.value.trim(), name: name.value.trim(), role: role.value } });
        await signIn(token);
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) {
          showError(status, { code: err.code, message: 'This server does not hand out development tokens. Paste a token you were given instead.' });
        } else showError(status, err, 'Cannot sign in:');
      } finally {
        devBtn.disabled = false;
      }
    },
  },
  h('label', {}, 'User id', sub),
  h('label', {}, 'Display name', name),
  h('label', {}, 'Role', role),
  devBtn);

  const pasted = h('textarea', { name: 'token', rows: 3, required: true, placeholder: 'eyJhbGciOi…', spellcheck: 'false' });
  const tokenBtn = h('button', { type: 'submit' }, 'Use this token');
  const tokenForm = h('form', {
    class: 'stack',
    onsubmit: async (e) => {
      e.preventDefault();
      clear(status);
      tokenBtn.disabled = true;
      try {
        await signIn(pasted.value.trim().replace(/^Bearer\s+/i, ''));
      } catch (err) {
        showError(status, err.status === 401 ? { code: err.code, message: 'This token is not valid here (wrong signature, expired or malformed).' } : err, 'Cannot sign in:');
      } finally {
        tokenBtn.disabled = false;
      }
    },
  }, h('label', {}, 'Token', pasted), tokenBtn);

  root.appendChild(h('section', { class: 'card narrow signin' },
    h('h1', {}, 'Sign in'),
    h('p', { class: 'muted' }, location.pathname.startsWith('/consult/') ? 'Sign in to join your consultation.' : 'Video consultations with your care team.'),
    session.signInMessage ? h('div', { class: 'notice notice-warning' }, session.signInMessage) : null,
    status,
    devForm,
    h('details', {}, h('summary', {}, 'I have a token'), tokenForm)));
  session.signInMessage = null;
  sub.focus();
  return () => {};
}

// ---------------------------------------------------------------- home: appointments + calls

function renderHome(root, ctx) {
  const { me } = ctx;
  const canManage = me.role === 'doctor' || me.role === 'staff' || me.role === 'admin';
  const listHost = h('div', { class: 'appointments' }, h('p', { class: 'muted' }, 'Loading…'));
  const listStatus = h('div', { class: 'form-status' });
  let disposed = false;

  async function load() {
    try {
      const listed = (await api('/api/appointments')).appointments || [];
      // GET /api/appointments lists only where you are patient or doctor (admins: all). Staff
      // also see the ones they created or looked up in this browser session.
      const known = new Set(listed.map((a) => a.id));
      const extra = await Promise.all(trackedAppointments()
        .filter((id) => !known.has(id))
        .map((id) => api(`/api/appointments/${encodeURIComponent(id)}`).catch(() => null)));
      const appointments = [...listed, ...extra.filter(Boolean)];
      if (disposed) return;
      clear(listStatus);
      clear(listHost);
      if (!appointments || appointments.length === 0) {
        listHost.appendChild(h('p', { class: 'muted' }, canManage ? 'No appointments yet. Create one below.' : 'You have no appointments yet.'));
        return;
      }
      const sorted = [...appointments].sort((a, b) => String(a.scheduledAt).localeCompare(String(b.scheduledAt)));
      listHost.appendChild(h('ul', { class: 'appt-list' }, sorted.map((a) => appointmentRow(a))));
    } catch (err) {
      if (disposed) return;
      clear(listHost);
      showError(listStatus, err, 'Cannot load appointments:');
    }
  }

  function appointmentRow(a) {
    const isDoctor = me.id === a.doctorId;
    const isPatient = me.id === a.patientId;
    const privileged = me.role === 'staff' || me.role === 'admin';
    const rowStatus = h('div', { class: 'form-status' });
    const act = (label, path, cls = '') => h('button', {
      class: `small ${cls}`,
      onclick: async (e) => {
        if (label === 'Cancel' && !window.confirm('Cancel this appointment? No one will be able to join its room.')) return;
        e.target.disabled = true;
        try {
          await api(`/api/appointments/${encodeURIComponent(a.id)}/${path}`, { method: 'POST' });
          toast(label === 'Confirm' ? 'Appointment confirmed.' : 'Appointment cancelled.', 'ok');
          load();
        } catch (err) {
          e.target.disabled = false;
          showError(rowStatus, err);
        }
      },
    }, label);
    const actions = [];
    if (a.status === 'confirmed' && a.joinUrl && (isDoctor || isPatient || me.role === 'admin')) {
      actions.push(h('a', { class: 'button primary small', href: a.joinUrl, dataset: { link: '' }, 'aria-label': `Join the consultation of ${formatDateTime(a.scheduledAt)}` }, 'Join'));
    }
    if (isDoctor || isPatient) session.calls.rememberName(isDoctor ? a.patientId : a.doctorId, isDoctor ? a.patientName : a.doctorName);
    if (a.status === 'confirmed' && (isDoctor || isPatient)) {
      const other = isDoctor ? a.patientId : a.doctorId;
      const otherName = isDoctor ? a.patientName : a.doctorName;
      actions.push(h('button', {
        class: 'small',
        title: `Direct video call to ${otherName || other}`,
        onclick: () => session.calls.place(other, 'video', a.id, otherName).catch((err) => showError(rowStatus, err)),
      }, isDoctor ? 'Call patient' : 'Call doctor'));
    }
    if (a.status === 'pending' && (isDoctor || privileged)) actions.push(act('Confirm', 'confirm'));
    if (a.status !== 'cancelled' && (isDoctor || isPatient || privileged)) actions.push(act('Cancel', 'cancel', 'danger-outline'));
    const withWhom = isPatient
      ? [h('span', { class: 'muted' }, 'with '), a.doctorName || a.doctorId]
      : isDoctor
        ? [h('span', { class: 'muted' }, 'with '), a.patientName || a.patientId]
        : [a.patientName || a.patientId, h('span', { class: 'muted' }, ' with '), a.doctorName || a.doctorId];
    return h('li', { class: 'appt', dataset: { id: a.id, status: a.status } },
      h('div', { class: 'appt-when' }, formatDateTime(a.scheduledAt)),
      h('div', { class: 'appt-who' }, withWhom),
      h('span', { class: `pill pill-${a.status}` }, a.status),
      h('div', { class: 'appt-actions' }, actions),
      a.status === 'confirmed' && (isDoctor || me.role === 'admin') ? waitingBadge(a, navigate) : null,
      rowStatus);
  }

  const sections = [
    h('section', { class: 'card' },
      h('div', { class: 'card-head' }, h('h1', {}, 'Appointments'), h('button', { class: 'small', onclick: () => load() }, 'Refresh')),
      me.role === 'doctor' ? alertsButton() : null,
      listStatus, listHost),
  ];
  if (canManage) sections.push(createForm(me, (a) => {
    trackAppointment(a.id);
    load();
  }));
  if (me.role === 'staff') sections.push(lookupForm(load));
  root.appendChild(h('div', { class: 'home' },
    h('div', { class: 'home-main' }, sections),
    h('div', { class: 'home-side' }, callBox(session.calls))));
  load();
  return () => {
    disposed = true;
  };
}

const TRACKED_KEY = 'callrelay.trackedAppointments';

function trackedAppointments() {
  try {
    return JSON.parse(sessionStorage.getItem(TRACKED_KEY) || '[]');
  } catch {
    return [];
  }
}

function trackAppointment(id) {
  const ids = trackedAppointments().filter((x) => x !== id);
  ids.push(id);
  sessionStorage.setItem(TRACKED_KEY, JSON.stringify(ids.slice(-50)));
}

/** Staff are not patient or doctor of the appointments they manage: look one up by id. */
function lookupForm(onFound) {
  const status = h('div', { class: 'form-status' });
  const id = h('input', { name: 'appointmentId', required: true, placeholder: 'appointment id', autocomplete: 'off' });
  const form = h('form', {
    class: 'inline-form',
    onsubmit: async (e) => {
      e.preventDefault();
      clear(status);
      try {
        const a = await api(`/api/appointments/${encodeURIComponent(id.value.trim())}`);
        trackAppointment(a.id);
        id.value = '';
        onFound();
      } catch (err) {
        showError(status, err, 'Cannot open this appointment:');
      }
    },
  }, id, h('button', { type: 'submit' }, 'Show'));
  return h('section', { class: 'card' }, h('h2', {}, 'Find an appointment'),
    h('p', { class: 'muted' }, 'Your list shows the appointments you created or looked up in this session.'), form, status);
}

function createForm(me, onCreated) {
  const isDoctor = me.role === 'doctor';
  const status = h('div', { class: 'form-status' });
  const patientId = h('input', { name: 'patientId', required: true, placeholder: 'e.g. pat1' });
  const patientName = h('input', { name: 'patientName', placeholder: 'optional' });
  const doctorId = h('input', { name: 'doctorId', required: true, value: isDoctor ? me.id : '', readOnly: isDoctor, placeholder: 'e.g. doc1' });
  const doctorName = h('input', { name: 'doctorName', value: isDoctor ? me.name : '', placeholder: 'optional' });
  const soon = new Date(Date.now() + 60 * 60 * 1000);
  soon.setMinutes(soon.getMinutes() < 30 ? 30 : 60, 0, 0);
  const local = new Date(soon.getTime() - soon.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  const when = h('input', { name: 'scheduledAt', type: 'datetime-local', required: true, value: local });
  const btn = h('button', { class: 'primary', type: 'submit' }, 'Create appointment');
  const form = h('form', {
    class: 'grid-form',
    onsubmit: async (e) => {
      e.preventDefault();
      clear(status);
      btn.disabled = true;
      const body = {
        patientId: patientId.value.trim(),
        doctorId: doctorId.value.trim(),
        scheduledAt: new Date(when.value).toISOString(),
      };
      if (patientName.value.trim()) body.patientName = patientName.value.trim();
      if (doctorName.value.trim()) body.doctorName = doctorName.value.trim();
      try {
        const created = await api('/api/appointments', { method: 'POST', body });
        toast('Appointment created. Confirm it to open its room.', 'ok');
        patientId.value = '';
        patientName.value = '';
        onCreated(created);
      } catch (err) {
        showError(status, err, 'Cannot create the appointment:');
      } finally {
        btn.disabled = false;
      }
    },
  },
  h('label', {}, 'Patient id', patientId),
  h('label', {}, 'Patient name', patientName),
  h('label', {}, 'Doctor id', doctorId),
  h('label', {}, 'Doctor name', doctorName),
  h('label', {}, 'Date and time', when),
  h('div', { class: 'form-actions' }, btn),
  status);
  return h('section', { class: 'card' }, h('h2', {}, 'New appointment'),
    isDoctor ? h('p', { class: 'muted' }, 'As a doctor you create appointments for yourself.') : null, form);
}

// ---------------------------------------------------------------- start

async function boot() {
  const token = getToken();
  if (token) {
    try {
      await signIn(token);
      return;
    } catch (err) {
      if (err.status === 401) setToken(null);
      session.signInMessage = err.status === 401 ? 'Your previous sign-in has expired. Please sign in again.' : `Could not restore your session: ${err.message}`;
    }
  }
  render();
}

window.addEventListener('pagehide', () => {
  if (session.disposeView) session.disposeView();
  session.disposeView = null;
});

boot();
