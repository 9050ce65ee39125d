"use strict";
// sdq web page: the HTTP API client (token, JSON calls, Server-Sent Events read with fetch).

const TOKEN_KEY = "sdq.token";

class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "error";
    this.field = error.field || null;
  }
}

const Api = {
  token() { return sessionStorage.getItem(TOKEN_KEY) || ""; },
  setToken(t) { t ? sessionStorage.setItem(TOKEN_KEY, t) : sessionStorage.removeItem(TOKEN_KEY); },
  onUnauthorized: () => {},

  headers(extra = {}) {
    const t = Api.token();
    return t ? {...extra, Authorization: `Bearer ${t}`} : extra;
  },

  // A JSON call; throws ApiError with the API's {code, message, field}.
  async call(path, {method = "GET", json, body, headers = {}, signal} = {}) {
    if (json !== undefined) {
      body = JSON.stringify(json);
      headers = {...headers, "Content-Type": "application/json"};
    }
    const r = await fetch(path, {method, body, headers: Api.headers(headers), signal});
    let doc = null;
    try { doc = await r.json(); } catch (_) { doc = null; }
    if (r.status === 401) Api.onUnauthorized();
    if (!r.ok) throw new ApiError(r.status, (doc && doc.error) || {message: `HTTP ${r.status} ${r.statusText}`});
    return doc;
  },

  // Read a Server-Sent Events stream with fetch (EventSource cannot send the Authorization header).
  // Calls onEvent(name, data) per event; resolves when the stream ends, rejects on a network error.
  async events(path, onEvent, signal) {
    const r = await fetch(path, {headers: Api.headers({Accept: "text/event-stream"}), signal, cache: "no-store"});
    if (r.status === 401) Api.onUnauthorized();
    if (!r.ok) {
      let err = {message: `HTTP ${r.status}`};
      try { err = (await r.json()).error || err; } catch (_) { /* not JSON */ }
      throw new ApiError(r.status, err);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += decoder.decode(value, {stream: true}).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        Api.dispatchFrame(frame, onEvent);
      }
    }
  },

  dispatchFrame(frame, onEvent) {
    let name = "message";
    const data = [];
    for (const line of frame.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (field === "event") name = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return;
    let parsed;
    try { parsed = JSON.parse(data.join("\n")); } catch (_) { return; }
    onEvent(name, parsed);
  },
};
