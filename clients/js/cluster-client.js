// A client for cluster's WebSocket endpoints: RPC, groups with exact recovery,
// presence, reconnection. One ES module, no dependencies; docs/clients.md.
//
//   import { connect } from "/_cluster/client.js";   // served by every gateway
//   const client = connect("/rpc");
//   client.on("state", ({ state, code }) => show(state));
//   client.subscribe("room:lobby", { onMessage: (m) => add(m.data), onGap: reload });
//   const answer = await client.call("chat", "say", { text: "hi" });
//
// One WebSocket at a time. When it drops, the client reconnects after a pause that
// starts at 0.5 s and doubles up to 8 s, each with +-25% jitter, until close(). After
// every (re)connect it subscribes again to its groups, sending the last (epoch,
// offset) it received of each, so the server sends what was missed exactly once and
// in order, or says it cannot ("gap": the page reloads what it shows).
//
// Calls made while disconnected wait in a queue of at most `queueSize` (100), sent
// in order after the subscriptions once connected; a call made when the queue is
// full is rejected at once ("queue_full"). A call sent but not answered when the
// connection drops is rejected ("disconnected"): it may or may not have run, so it is
// never sent twice. close() rejects whatever still waits ("closed").

export const CONNECTING = "connecting";
export const OPEN = "open";
export const RECONNECTING = "reconnecting";
export const CLOSED = "closed";

const DEFAULTS = {
  callTimeout: 10000, // ms a call waits for its answer
  queueSize: 100, // calls kept while disconnected
  firstDelay: 500, // ms before the first reconnect; doubles each failed attempt
  maxDelay: 8000,
  WebSocket: undefined, // a WebSocket class where there is no global one (node 20: ws)
};

export class CallError extends Error {
  constructor(kind, message) {
    super(`${kind}: ${message}`);
    this.name = "CallError";
    this.kind = kind; // bad_request, not_found, forbidden, internal, timeout,
    // disconnected, queue_full, closed
  }
}

function absolute(url) {
  if (/^wss?:\/\//.test(url) || typeof location === "undefined") return url;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${url.startsWith("/") ? "" : "/"}${url}`;
}

class Subscription {
  constructor(client, group, handlers) {
    this.client = client;
    this.group = group;
    this.handlers = handlers;
    this.since = null; // [epoch, offset] of the last message received
    this.active = true;
  }

  unsubscribe() {
    return this.client.unsubscribe(this.group);
  }
}

export class Client {
  constructor(url, options = {}) {
    this.url = absolute(url);
    this.options = { ...DEFAULTS, ...options };
    this.WebSocket = this.options.WebSocket || globalThis.WebSocket;
    if (!this.WebSocket) throw new Error("no WebSocket class: pass options.WebSocket");
    this.state = CONNECTING;
    this.code = null; // of the last connection that closed
    this.attempt = 0; // failed attempts since the last open
    this.subscriptions = new Map();
    this.listeners = new Map();
    this.outbox = []; // not sent: {id, text, call, group}
    this.pending = new Map(); // sent, not answered: id -> call
    this.nextId = 1;
    this.ws = null;
    this.timer = null;
    this.closing = false;
    this._open();
  }

  // -- events -------------------------------------------------------------------
  on(event, callback) {
    // "state" ({state, code, attempt: failed attempts before it, delay: ms until the
    // next one when reconnecting}), "message" (a push or a plain
    // broadcast), "gap" ({group, epoch}), "error" (a refused subscription)
    if (!this.listeners.has(event)) this.listeners.set(event, []);
    this.listeners.get(event).push(callback);
    return this;
  }

  off(event, callback) {
    const list = this.listeners.get(event) || [];
    const at = list.indexOf(callback);
    if (at >= 0) list.splice(at, 1);
    return this;
  }

  _emit(event, value) {
    for (const callback of this.listeners.get(event) || []) {
      try {
        callback(value);
      } catch (error) {
        console.error(`cluster client: a "${event}" listener threw`, error);
      }
    }
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit("state", { state, code: this.code, attempt: this.attempt, ...extra });
  }

  // -- the connection -------------------------------------------------------------
  _open() {
    const ws = new this.WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      // Subscriptions and waiting calls go first: a listener's calls follow them.
      this.state = OPEN;
      this._resume();
      this._setState(OPEN); // with the number of failed attempts it took
      this.attempt = 0;
    };
    ws.onmessage = (event) => {
      if (this.ws === ws) this._receive(event.data);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.code = event.code;
      this._failPending("disconnected", "the connection dropped before the answer came");
      if (this.closing) return;
      this.attempt += 1;
      const pause = Math.min(this.options.maxDelay,
                             this.options.firstDelay * 2 ** (this.attempt - 1));
      const delay = Math.round(pause * (0.75 + Math.random() / 2));
      this._setState(RECONNECTING, { delay });
      this.timer = setTimeout(() => {
        this.timer = null;
        if (!this.closing) this._open();
      }, delay);
    };
    ws.onerror = () => {}; // a close follows, which says all there is to say
  }

  _resume() {
    // The subscriptions first, each from what it last saw, then the waiting calls.
    const calls = this.outbox.filter((item) => item.group === undefined);
    this.outbox = [];
    for (const sub of this.subscriptions.values()) this.outbox.push(this._subscribeItem(sub));
    this.outbox.push(...calls);
    this._flush();
  }

  _flush() {
    const ws = this.ws;
    if (!ws || this.state !== OPEN) return;
    while (this.outbox.length) {
      const item = this.outbox.shift();
      if (item.call.settled) continue; // timed out before it was sent
      if (item.group !== undefined) {
        const sub = this.subscriptions.get(item.group);
        if (!sub) continue;
        item.text = request(item.id, "cluster", "subscribe",
                            { group: sub.group, since: sub.since });
      }
      this.pending.set(item.id, item.call);
      ws.send(item.text);
    }
  }

  _receive(raw) {
    let frame;
    try {
      frame = typeof raw === "string" ? JSON.parse(raw) : raw;
    } catch {
      this._emit("message", raw);
      return;
    }
    if (frame === null || typeof frame !== "object" || Array.isArray(frame)) {
      this._emit("message", frame);
    } else if ("request_id" in frame && (frame.event === "result" || frame.event === "error")) {
      const call = this.pending.get(frame.request_id);
      if (!call) return;
      this.pending.delete(frame.request_id);
      if (frame.event === "result") call.resolve(frame.data);
      else {
        const error = frame.data || {};
        call.reject(new CallError(String(error.error), String(error.message)));
      }
    } else if (typeof frame.group === "string" && Number.isInteger(frame.offset)) {
      const sub = this.subscriptions.get(frame.group);
      if (!sub || !sub.active) return;
      const since = sub.since;
      if (since && since[0] === frame.epoch && frame.offset <= since[1]) return; // had it
      sub.since = [frame.epoch, frame.offset];
      if (sub.handlers.onMessage) sub.handlers.onMessage(frame);
    } else if (typeof frame.group === "string" && "recovered" in frame) {
      const sub = this.subscriptions.get(frame.group);
      if (!sub || !sub.active || !sub.since) return; // a first subscription: nothing missed
      if (frame.recovered) {
        if (sub.handlers.onRecovered) sub.handlers.onRecovered({ group: frame.group, epoch: frame.epoch });
        return;
      }
      const gap = { group: frame.group, epoch: frame.epoch || "" };
      sub.since = null; // live from here
      this._emit("gap", gap);
      if (sub.handlers.onGap) sub.handlers.onGap(gap);
    } else {
      this._emit("message", frame);
    }
  }

  // -- calls -----------------------------------------------------------------------
  _newCall(timeout) {
    const call = { settled: false };
    call.promise = new Promise((resolve, reject) => {
      call.resolve = (value) => { call.settled = true; clearTimeout(call.timer); resolve(value); };
      call.reject = (error) => { call.settled = true; clearTimeout(call.timer); reject(error); };
    });
    if (timeout) {
      call.timer = setTimeout(() => {
        call.reject(new CallError("timeout", `no answer within ${timeout / 1000} s`));
      }, timeout);
    }
    return call;
  }

  call(module, method, data = {}) {
    if (this.closing) return Promise.reject(new CallError("closed", "the client was closed"));
    const waiting = this.outbox.filter((item) => item.group === undefined).length;
    if (this.state !== OPEN && waiting >= this.options.queueSize) {
      return Promise.reject(new CallError(
        "queue_full", `${this.options.queueSize} calls already wait for a connection`));
    }
    const id = this.nextId++;
    const call = this._newCall(this.options.callTimeout);
    call.promise.catch(() => this.pending.delete(id));
    this.outbox.push({ id, text: request(id, module, method, data), call });
    this._flush();
    return call.promise;
  }

  _subscribeItem(sub) {
    const id = this.nextId++;
    const call = this._newCall(0);
    call.promise.catch((error) => {
      if (error.kind === "disconnected" || error.kind === "closed") return;
      sub.active = false; // refused: it ends here
      if (this.subscriptions.get(sub.group) === sub) this.subscriptions.delete(sub.group);
      this._emit("error", { group: sub.group, error });
      if (sub.handlers.onError) sub.handlers.onError(error);
    });
    return { id, call, group: sub.group, text: "" };
  }

  subscribe(group, handlers = {}) {
    // handlers: onMessage({group, epoch, offset, data}), onGap({group, epoch}),
    // onRecovered({group, epoch}) after a reconnect that missed nothing, onError(CallError)
    // when the server refuses the group.
    let sub = this.subscriptions.get(group);
    if (sub) {
      sub.handlers = handlers;
      return sub;
    }
    sub = new Subscription(this, group, handlers);
    this.subscriptions.set(group, sub);
    if (this.state === OPEN) {
      this.outbox.push(this._subscribeItem(sub));
      this._flush();
    }
    return sub;
  }

  async unsubscribe(group) {
    const sub = this.subscriptions.get(group);
    if (!sub) return;
    sub.active = false;
    this.subscriptions.delete(group);
    if (this.state === OPEN) await this.call("cluster", "unsubscribe", { group });
  }

  presence(group) {
    // {group, count, conns}: who is in the group, over every gateway
    return this.call("cluster", "presence", { group });
  }

  send(data) {
    // a raw message to the server's handler (not RPC); false while disconnected
    if (!this.ws || this.state !== OPEN) return false;
    this.ws.send(typeof data === "string" ? data : JSON.stringify(data));
    return true;
  }

  close() {
    this.closing = true;
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
    const closed = () => new CallError("closed", "the client was closed");
    this._failPending("closed", "the client was closed");
    for (const item of this.outbox) item.call.reject(closed());
    this.outbox = [];
    if (this.state !== CLOSED) this._setState(CLOSED);
  }

  _failPending(kind, message) {
    const pending = this.pending;
    this.pending = new Map();
    for (const call of pending.values()) call.reject(new CallError(kind, message));
  }
}

function request(id, module, method, data) {
  return JSON.stringify({ request_id: id, module, method, data });
}

export function connect(url, options) {
  return new Client(url, options);
}
