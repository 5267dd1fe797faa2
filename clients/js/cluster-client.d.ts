// Types for cluster-client.js (docs/clients.md).

export type State = "connecting" | "open" | "reconnecting" | "closed";
export declare const CONNECTING: "connecting";
export declare const OPEN: "open";
export declare const RECONNECTING: "reconnecting";
export declare const CLOSED: "closed";

export type ErrorKind =
  | "bad_request" | "not_found" | "forbidden" | "internal"
  | "timeout" | "disconnected" | "queue_full" | "closed";

export declare class CallError extends Error {
  readonly kind: ErrorKind | string;
  constructor(kind: string, message: string);
}

export interface Options {
  /** ms a call waits for its answer (10000) */
  callTimeout?: number;
  /** calls kept while disconnected; beyond, a call is rejected with queue_full (100) */
  queueSize?: number;
  /** ms before the first reconnect, doubling each failed attempt (500) */
  firstDelay?: number;
  /** the longest pause between attempts, ms (8000) */
  maxDelay?: number;
  /** a WebSocket class where there is no global one (node 20: the ws package) */
  WebSocket?: unknown;
}

/** A message published to a group, numbered in its epoch. */
export interface GroupMessage<T = unknown> {
  group: string;
  epoch: string;
  offset: number;
  data: T;
}

/** Messages of the group were missed for good: reload what the page shows. */
export interface Gap {
  group: string;
  epoch: string;
}

export interface StateChange {
  state: State;
  /** the close code of the last connection that closed, or null */
  code: number | null;
  /** failed attempts before this state (on "open": how many it took) */
  attempt: number;
  /** ms until the next attempt (reconnecting only) */
  delay?: number;
}

export interface Handlers<T = unknown> {
  onMessage?: (message: GroupMessage<T>) => void;
  onGap?: (gap: Gap) => void;
  /** after a reconnect: everything missed was sent, in order */
  onRecovered?: (position: { group: string; epoch: string }) => void;
  onError?: (error: CallError) => void;
}

export interface Presence {
  group: string;
  count: number;
  conns: string[];
}

export declare class Subscription {
  readonly group: string;
  /** [epoch, offset] of the last message received, or null */
  readonly since: [string, number] | null;
  unsubscribe(): Promise<void>;
}

export declare class Client {
  readonly url: string;
  readonly state: State;
  readonly code: number | null;
  constructor(url: string, options?: Options);
  on(event: "state", callback: (change: StateChange) => void): this;
  on(event: "message", callback: (data: unknown) => void): this;
  on(event: "gap", callback: (gap: Gap) => void): this;
  on(event: "error", callback: (error: { group: string; error: CallError }) => void): this;
  off(event: string, callback: (...args: any[]) => void): this;
  call<R = unknown>(module: string, method: string, data?: Record<string, unknown>): Promise<R>;
  subscribe<T = unknown>(group: string, handlers?: Handlers<T>): Subscription;
  unsubscribe(group: string): Promise<void>;
  presence(group: string): Promise<Presence>;
  send(data: unknown): boolean;
  close(): void;
}

/** A client for `url` (ws://, wss://, or a path on the page's own host). */
export declare function connect(url: string, options?: Options): Client;
