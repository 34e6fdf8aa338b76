// Socket.IO connection (contract section 3) and acknowledged emits.
// `io` is the global from /vendor/socket.io.min.js (the official client, v4).

/** A refused or unanswered socket event: `{ok:false, error:{code,message}}` or a timeout. */
export class SignalError extends Error {
  constructor(code, message, event) {
    super(message);
    this.name = 'SignalError';
    this.code = code;
    this.event = event;
  }
}

export function connect(token) {
  // eslint-disable-next-line no-undef
  return io(location.origin, { auth: { token } });
}

/** Emits `event` and resolves with the `{ok:true,...}` ack, or rejects with a SignalError. */
export async function ask(socket, event, payload, timeoutMs = 10000) {
  let ack;
  try {
    ack = await socket.timeout(timeoutMs).emitWithAck(event, payload);
  } catch {
    throw new SignalError('timeout', `The server did not answer "${event}" within ${timeoutMs / 1000} s`, event);
  }
  if (!ack || ack.ok !== true) {
    const e = (ack && ack.error) || {};
    throw new SignalError(e.code || 'error', e.message || `"${event}" was refused`, event);
  }
  return ack;
}

/** Like ask(), for events whose failure only needs logging (candidates). */
export function tell(socket, event, payload) {
  ask(socket, event, payload).catch((err) => console.warn(`[callrelay] ${event}: ${err.code}: ${err.message}`));
}

/** socket.on() for a list of handlers; returns a function that removes them all again. */
export function listen(socket, handlers) {
  for (const [event, fn] of Object.entries(handlers)) socket.on(event, fn);
  return () => {
    for (const [event, fn] of Object.entries(handlers)) socket.off(event, fn);
  };
}
