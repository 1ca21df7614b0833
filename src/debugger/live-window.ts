import type { NatsConnection, Subscription } from "@nats-io/nats-core";
import { SUBJECT_ROOT } from "../bus/subjects.ts";

/**
 * The recent traffic of every connection, as the Event debugger and the live SSE feed see it.
 * It listens to the events subjects with a plain NATS subscription, so it sees what every node
 * stored, and keeps the last messages as bytes: parsing happens only when someone looks, so an
 * unwatched node pays a copy per message, not a JSON.parse per event.
 */
export interface LiveEvent {
  /** `<node epoch>:<message number>.<index>`: resumable while the message is in the window. */
  id: string;
  event: Record<string, unknown>;
}

interface Held {
  n: number;
  data: Uint8Array;
}

type Listener = (events: LiveEvent[]) => void;

export interface LiveWindowOptions {
  /** Bytes of recent messages kept per connection. */
  bytesPerConnection: number;
}

const decoder = new TextDecoder();

class ConnectionWindow {
  readonly held: Held[] = [];
  bytes = 0;
  next = 0;
  readonly listeners = new Set<Listener>();
}

export class LiveWindow {
  readonly epoch = Date.now().toString(36);
  readonly #windows = new Map<string, ConnectionWindow>();
  #sub?: Subscription;

  constructor(readonly options: LiveWindowOptions = { bytesPerConnection: 4 * 1024 * 1024 }) {}

  start(nc: NatsConnection): void {
    this.#sub = nc.subscribe(`${SUBJECT_ROOT}.>`, {
      callback: (err, m) => {
        if (err) return;
        const connection = m.subject.split(".")[2];
        if (connection) this.#add(connection, m.data);
      },
    });
  }

  stop(): void {
    this.#sub?.unsubscribe();
  }

  #window(connection: string): ConnectionWindow {
    let w = this.#windows.get(connection);
    if (!w) this.#windows.set(connection, (w = new ConnectionWindow()));
    return w;
  }

  #add(connection: string, data: Uint8Array): void {
    const w = this.#window(connection);
    const held = { n: w.next++, data };
    w.held.push(held);
    w.bytes += data.length;
    while (w.bytes > this.options.bytesPerConnection && w.held.length > 1) w.bytes -= w.held.shift()!.data.length;
    if (w.listeners.size) {
      const events = this.#parse(held);
      for (const l of w.listeners) l(events);
    }
  }

  #parse(h: Held): LiveEvent[] {
    let v: unknown;
    try {
      v = JSON.parse(decoder.decode(h.data));
    } catch {
      return [];
    }
    const list = Array.isArray(v) ? v : [v];
    return list.map((event, i) => ({ id: `${this.epoch}:${h.n}.${i}`, event: event as Record<string, unknown> }));
  }

  /** The last `count` events, oldest first. */
  recent(connection: string, count = 100): LiveEvent[] {
    const w = this.#windows.get(connection);
    if (!w) return [];
    const out: LiveEvent[][] = [];
    let have = 0;
    for (let i = w.held.length - 1; i >= 0 && have < count; i--) {
      const events = this.#parse(w.held[i]!);
      out.unshift(events);
      have += events.length;
    }
    return out.flat().slice(-count);
  }

  /** Events after `lastId`, or undefined when that id is no longer (or never was) in the window. */
  after(connection: string, lastId: string): LiveEvent[] | undefined {
    const m = /^([0-9a-z]+):(\d+)\.(\d+)$/.exec(lastId);
    const w = this.#windows.get(connection);
    if (!m || m[1] !== this.epoch || !w) return undefined;
    const n = Number(m[2]);
    const index = Number(m[3]);
    const at = w.held.findIndex((h) => h.n === n);
    if (at < 0) return n >= w.next ? [] : undefined;
    return w.held.slice(at).flatMap((h) => this.#parse(h).filter((_, i) => h.n !== n || i > index));
  }

  find(connection: string, messageId: string): Record<string, unknown> | undefined {
    const w = this.#windows.get(connection);
    if (!w) return undefined;
    const needle = JSON.stringify(messageId);
    for (let i = w.held.length - 1; i >= 0; i--) {
      // Only parse messages that can hold it.
      if (!decoder.decode(w.held[i]!.data).includes(needle)) continue;
      const hit = this.#parse(w.held[i]!).find((e) => e.event.messageId === messageId);
      if (hit) return hit.event;
    }
    return undefined;
  }

  subscribe(connection: string, listener: Listener): () => void {
    const w = this.#window(connection);
    w.listeners.add(listener);
    return () => w.listeners.delete(listener);
  }
}
