// The API and the WebSockets, with the token from this tab's sessionStorage: sent in the
// Authorization header, and on WebSockets as a subprotocol; never in a URL.

const TOKEN_KEY = "illustrator.api_token";
const listeners = new Set();

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Called with no argument whenever the server answers 401. */
export function onAuthRequired(listener) {
  listeners.add(listener);
}

export class ApiError extends Error {
  constructor(status, body) {
    const reason = (body && body.error) || `the server answered ${status}`;
    super(reason);
    this.status = status;
    this.body = body || {};
  }
}

function headers(extra = {}) {
  const result = { Accept: "application/json", ...extra };
  const value = token();
  if (value) result.Authorization = `Bearer ${value}`;
  return result;
}

/** A JSON API call; throws ApiError with the server's reason on a 4xx/5xx. */
export async function api(method, path, { json, form } = {}) {
  const init = { method, headers: headers(), credentials: "same-origin" };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, { error: "the server cannot be reached" });
  }
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  if (!response.ok) {
    if (response.status === 401) listeners.forEach((listener) => listener());
    throw new ApiError(response.status, body);
  }
  return body;
}

/** A file the API serves (image, export), as an object URL: <img src> cannot send a token. */
export async function fileUrl(path) {
  if (!token()) return path;
  const response = await fetch(path, { headers: headers({ Accept: "*/*" }) });
  if (!response.ok) {
    if (response.status === 401) listeners.forEach((listener) => listener());
    throw new ApiError(response.status, null);
  }
  return URL.createObjectURL(await response.blob());
}

function base64url(text) {
  let binary = "";
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/**
 * A session's events over /ws/processing/{id}, reconnecting after a drop or a server
 * restart with ?after= the last event seen: replayed events fill the gap, and an event
 * already seen is never passed on twice.
 *
 * Options: `after` (null: no replay, the snapshot only; a number: replay after it),
 * `onFrame(frame)`, `onState("connecting" | "live" | "reconnecting")`.
 */
export class SessionEvents {
  constructor(sessionId, { after = null, onFrame, onState = () => {} }) {
    this.sessionId = sessionId;
    this.after = after;
    this.onFrame = onFrame;
    this.onState = onState;
    this.delay = 250;
    this.stopped = false;
    this.socket = null;
    this.timer = null;
  }

  start() {
    this.stopped = false;
    this.connect();
    return this;
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = this.after === null ? "" : `?after=${this.after}`;
    const url = `${scheme}//${location.host}/ws/processing/${encodeURIComponent(this.sessionId)}${query}`;
    const protocols = ["illustrator"];
    if (token()) protocols.push(`illustrator.bearer.${base64url(token())}`);
    this.onState("connecting");
    const socket = new WebSocket(url, protocols);
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.delay = 250;
      this.onState("live");
    });
    socket.addEventListener("message", (message) => this.receive(message.data));
    socket.addEventListener("close", () => {
      if (this.socket !== socket || this.stopped) return;
      this.onState("reconnecting");
      this.timer = setTimeout(() => this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, 4000);
    });
  }

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (error) {
      return;
    }
    if (typeof frame !== "object" || frame === null) return;
    if (Number.isInteger(frame.event_seq)) {
      if (this.after !== null && frame.event_seq <= this.after) return; // seen already
      this.after = frame.event_seq;
    } else if (frame.type === "snapshot" && this.after === null) {
      // From now on a reconnection replays what it missed.
      this.after = Number.isInteger(frame.last_event_seq) ? frame.last_event_seq : 0;
    }
    this.onFrame(frame);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000);
    this.socket = null;
  }
}
