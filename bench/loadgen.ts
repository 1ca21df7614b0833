// Load generator for bench/ingest.ts, run in its own process so it never shares the server's
// event loop. It speaks HTTP/1.1 over raw keep-alive sockets (Bun.connect): every request is
// built before the clock starts as one byte buffer per connection (headers + a 500-event JSON
// body made from the shared fixtures), and before each send only the fixed-width request number
// inside every messageId is rewritten in place, so every event of the run is unique (dedup never
// short-circuits) and sending costs the generator almost nothing.
//
// argv[2]: JSON LoadSpec. Prints one JSON LoadResult line on stdout.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import type { Socket } from "bun";

export interface LoadSpec {
  host: string;
  port: number;
  path: string;
  /** The write keys: by socket (slot i sends with keys[i % keys.length]) or, with
   *  `keyPerRequest`, request n sends with keys[n % keys.length]. */
  keys: string[];
  /** Round-robin over the keys by request rather than by socket, so each key gets the same share
   *  however the open loop picks its sockets (a key names a connection; capacity spreads a load
   *  over several). The keys must all have the same length: each is rewritten in place. */
  keyPerRequest?: boolean;
  /** "closed": `connections` senders, each sending its next request when the last is answered.
   *  "open": requests start on a fixed schedule at `eventsPerSecond`, whatever the answers. */
  mode: "closed" | "open";
  connections: number;
  /** Open loop: the most sockets it may open when answers lag behind the schedule. */
  maxConnections?: number;
  eventsPerSecond?: number;
  seconds: number;
  batch: number;
  /** Goes into every messageId: `b-<tag>-<request number>-<index>`. */
  tag: string;
  fixturesDir: string;
}

export interface LoadResult {
  tag: string;
  mode: string;
  elapsed: number;
  /** Requests started and answered (any status), and how many got no answer (socket error). */
  sent: number;
  answered: number;
  errors: number;
  statuses: Record<string, number>;
  /** Events in 2xx answers ({"accepted": N}). */
  accepted: number;
  /** Request body bytes of 2xx answers. */
  acceptedBytes: number;
  bodyBytes: number;
  eventsPerSecond: number;
  mbPerSecond: number;
  /** Latency of 2xx answers, ms (open loop: from the scheduled start, so queueing counts). */
  p50: number;
  p90: number;
  p99: number;
  max: number;
  /** Latency of every answer whatever its status, ms. */
  allP50: number;
  allP99: number;
  offeredEventsPerSecond?: number;
  /** Open loop: requests that could not start on time because every socket was busy. */
  late?: number;
  socketsOpened: number;
  /** The request numbers answered 2xx: request n carried messageIds `b-<tag>-<n, 10 digits>-<0..batch-1>`. */
  okRequests: number[];
  cpuSeconds: number;
}

const ID_DIGITS = 10;
const HOLE = "#".repeat(ID_DIGITS);

/** The fixture events (files hold one event or an array of events), without their messageIds. */
export function fixtureEvents(dir: string): Record<string, unknown>[] {
  const files = readdirSync(dir)
    .filter((f) => f.endsWith(".json"))
    .sort();
  const events = files.flatMap((f) => {
    const v = JSON.parse(readFileSync(join(dir, f), "utf8")) as unknown;
    return (Array.isArray(v) ? v : [v]) as Record<string, unknown>[];
  });
  if (events.length === 0) throw new Error(`loadgen: no fixture events in ${dir}`);
  return events;
}

/** A request body with `batch` events and the byte offsets of each messageId's request-number slot. */
export function bodyTemplate(spec: Pick<LoadSpec, "batch" | "tag" | "fixturesDir">): {
  body: Uint8Array;
  holes: number[];
} {
  const fixtures = fixtureEvents(spec.fixturesDir);
  const events = Array.from({ length: spec.batch }, (_, i) => ({
    ...fixtures[i % fixtures.length],
    messageId: `b-${spec.tag}-${HOLE}-${i}`,
  }));
  const body = new TextEncoder().encode(JSON.stringify(events));
  const holes: number[] = [];
  const first = HOLE.charCodeAt(0);
  outer: for (let i = 0; i + ID_DIGITS <= body.length; i++) {
    for (let j = 0; j < ID_DIGITS; j++) if (body[i + j] !== first) continue outer;
    holes.push(i);
    i += ID_DIGITS - 1;
  }
  if (holes.length !== spec.batch)
    throw new Error(`loadgen: found ${holes.length} messageId slots, expected ${spec.batch}`);
  return { body, holes };
}

const encodedKeys = new Map<string, Uint8Array>();
const keyBytes = (key: string) => {
  let b = encodedKeys.get(key);
  if (!b) encodedKeys.set(key, (b = new TextEncoder().encode(key)));
  return b;
};

interface Pending {
  started: number;
  resolve: (r: { status: number; body: string } | undefined) => void;
}

/** Request numbers are unique in the process, whichever socket sends them. */
let requestNumber = 0;

/** One keep-alive HTTP/1.1 connection sending prebuilt requests, one at a time. */
class Conn {
  socket?: Socket<Conn>;
  closed = false;
  busy = false;
  #buf: Uint8Array;
  #holes: number[];
  /** Where the write key starts in #buf (rewritten per request with keyPerRequest). */
  #keyAt: number;
  #out?: Uint8Array;
  #writeDone = true;
  #pending?: Pending;
  #answer?: { status: number; body: string };
  #rx = "";
  #onWritten?: () => void;

  constructor(
    readonly spec: LoadSpec,
    readonly slot: number,
    template: { body: Uint8Array; holes: number[] },
  ) {
    const key = spec.keys[slot % spec.keys.length]!;
    const before = `POST ${spec.path} HTTP/1.1\r\nHost: ${spec.host}:${spec.port}\r\nAuthorization: Bearer `;
    this.#keyAt = new TextEncoder().encode(before).length;
    const head = new TextEncoder().encode(
      `${before}${key}\r\nContent-Type: application/json\r\nContent-Length: ${template.body.length}\r\n\r\n`,
    );
    this.#buf = new Uint8Array(head.length + template.body.length);
    this.#buf.set(head, 0);
    this.#buf.set(template.body, head.length);
    this.#holes = template.holes.map((h) => h + head.length);
  }

  async connect(): Promise<void> {
    this.closed = false;
    this.#rx = "";
    this.socket = await Bun.connect<Conn>({
      hostname: this.spec.host,
      port: this.spec.port,
      data: this,
      socket: {
        data: (s, chunk) => s.data.#onData(chunk),
        drain: (s) => s.data.#flush(),
        close: (s) => s.data.#onClose(),
        error: (s) => s.data.#onClose(),
        end: (s) => s.data.#onClose(),
      },
    });
    this.socket.setNoDelay?.(true);
  }

  /** Sends the next request; resolves with the answer, or undefined when the socket failed. */
  async send(started = performance.now()): Promise<{ status: number; body: string; request: number } | undefined> {
    if (this.closed || !this.socket) {
      try {
        await this.connect();
      } catch {
        this.closed = true;
        return undefined;
      }
    }
    // Rewrite the request number of every messageId in place: the previous request is fully written.
    const request = requestNumber++;
    const digits = String(request).padStart(ID_DIGITS, "0");
    const codes = Array.from(digits, (c) => c.charCodeAt(0));
    for (const h of this.#holes) for (let j = 0; j < ID_DIGITS; j++) this.#buf[h + j] = codes[j]!;
    if (this.spec.keyPerRequest) this.#buf.set(keyBytes(this.spec.keys[request % this.spec.keys.length]!), this.#keyAt);
    this.busy = true;
    const answer = new Promise<{ status: number; body: string } | undefined>(
      (resolve) => (this.#pending = { started, resolve }),
    );
    const written = new Promise<void>((r) => (this.#onWritten = r));
    this.#writeDone = false;
    this.#answer = undefined;
    this.#out = this.#buf;
    this.#flush();
    // A server may answer before reading the whole body (429); the socket is free once both are done.
    const [a] = await Promise.all([answer, written]);
    this.busy = false;
    return a && { ...a, request };
  }

  #flush(): void {
    if (this.#writeDone || !this.socket || !this.#out) return;
    const n = this.socket.write(this.#out);
    if (n < 0) return this.#onClose();
    if (n < this.#out.length) {
      this.#out = this.#out.subarray(n);
      return;
    }
    this.#out = undefined;
    this.#writeDone = true;
    this.#onWritten?.();
  }

  #onData(chunk: Buffer): void {
    this.#rx += chunk.toString("latin1");
    for (;;) {
      const end = this.#rx.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = this.#rx.slice(0, end);
      const status = Number(head.slice(9, 12));
      const lower = head.toLowerCase();
      const cl = /\r\ncontent-length:\s*(\d+)/.exec(lower);
      let body: string;
      let consumed: number;
      if (cl) {
        const len = Number(cl[1]);
        if (this.#rx.length < end + 4 + len) return;
        body = this.#rx.slice(end + 4, end + 4 + len);
        consumed = end + 4 + len;
      } else if (/\r\ntransfer-encoding:\s*chunked/.test(lower)) {
        let at = end + 4;
        body = "";
        for (;;) {
          const eol = this.#rx.indexOf("\r\n", at);
          if (eol < 0) return;
          const size = parseInt(this.#rx.slice(at, eol), 16);
          if (this.#rx.length < eol + 2 + size + 2) return;
          body += this.#rx.slice(eol + 2, eol + 2 + size);
          at = eol + 2 + size + 2;
          if (size === 0) break;
        }
        consumed = at;
      } else {
        body = "";
        consumed = end + 4;
      }
      this.#rx = this.#rx.slice(consumed);
      if (/\r\nconnection:\s*close/.test(lower)) this.closed = true;
      const p = this.#pending;
      this.#pending = undefined;
      p?.resolve({ status, body });
    }
  }

  #onClose(): void {
    if (this.closed && !this.#pending && this.#writeDone) return;
    this.closed = true;
    this.socket = undefined;
    // A request cut off mid-way: no answer, and no more bytes to write for it.
    const p = this.#pending;
    this.#pending = undefined;
    p?.resolve(undefined);
    if (!this.#writeDone) {
      this.#writeDone = true;
      this.#out = undefined;
      this.#onWritten?.();
    }
  }

  close(): void {
    this.socket?.end();
    this.closed = true;
  }

  /** Gives up on the request in flight (the server never answered): it counts as no answer. */
  abort(): void {
    this.socket?.terminate();
    this.#onClose();
  }
}

export async function runLoad(spec: LoadSpec): Promise<LoadResult> {
  if (spec.keyPerRequest && new Set(spec.keys.map((k) => keyBytes(k).length)).size !== 1)
    throw new Error("loadgen: keyPerRequest needs keys of one length (each is rewritten in place)");
  const template = bodyTemplate(spec);
  const bodyBytes = template.body.length;

  const ok: number[] = [];
  const okRequests: number[] = [];
  const all: number[] = [];
  const statuses: Record<string, number> = {};
  let accepted = 0;
  let acceptedBytes = 0;
  let sent = 0;
  let errors = 0;
  let late = 0;
  const conns: Conn[] = [];
  const newConn = async () => {
    const c = new Conn(spec, conns.length, template);
    conns.push(c);
    await c.connect();
    return c;
  };
  const initial = spec.mode === "closed" ? spec.connections : Math.min(spec.connections, spec.maxConnections ?? 256);
  await Promise.all(Array.from({ length: initial }, () => newConn()));

  const record = (started: number, a: { status: number; body: string; request: number } | undefined) => {
    sent++;
    const ms = performance.now() - started;
    if (!a) {
      errors++;
      return;
    }
    statuses[a.status] = (statuses[a.status] ?? 0) + 1;
    all.push(ms);
    if (a.status >= 200 && a.status < 300) {
      ok.push(ms);
      okRequests.push(a.request);
      try {
        accepted += (JSON.parse(a.body) as { accepted: number }).accepted;
      } catch {
        accepted += spec.batch;
      }
      acceptedBytes += bodyBytes;
    }
  };

  // The clock starts now: the bench samples CPU counters between this line and the result line.
  console.log(JSON.stringify({ started: true }));
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const until = t0 + spec.seconds * 1000;
  // A server that stops answering must not hang the benchmark: after a grace period, give up.
  const deadline = setTimeout(() => conns.forEach((c) => c.abort()), spec.seconds * 1000 + 30_000);
  if (spec.mode === "closed") {
    await Promise.all(
      conns.map(async (c) => {
        while (performance.now() < until) {
          const s = performance.now();
          record(s, await c.send(s));
        }
      }),
    );
  } else {
    const interval = (1000 * spec.batch) / spec.eventsPerSecond!;
    const max = spec.maxConnections ?? 256;
    const inflight = new Set<Promise<void>>();
    const waiting: number[] = []; // scheduled starts that found no free socket
    const idle = () => conns.find((c) => !c.busy);
    const start = (c: Conn, scheduled: number) => {
      c.busy = true;
      const p = c.send(scheduled).then((a) => {
        record(scheduled, a);
        inflight.delete(p);
        const next = waiting.shift();
        if (next !== undefined) start(c, next);
      });
      inflight.add(p);
    };
    let next = t0;
    while (performance.now() < until) {
      const now = performance.now();
      while (next <= now && next < until) {
        const c = idle();
        if (c) start(c, next);
        else if (conns.length < max) {
          const fresh = new Conn(spec, conns.length, template);
          conns.push(fresh);
          start(fresh, next);
        } else {
          late++;
          waiting.push(next);
        }
        next += interval;
      }
      await Bun.sleep(Math.max(0, Math.min(next - performance.now(), 5)));
    }
    while (inflight.size) await Promise.all([...inflight]);
  }
  const elapsed = (performance.now() - t0) / 1000;
  clearTimeout(deadline);
  for (const c of conns) c.close();

  const q = (xs: number[], p: number) => (xs.length ? xs[Math.min(xs.length - 1, Math.floor(p * xs.length))]! : NaN);
  ok.sort((a, b) => a - b);
  all.sort((a, b) => a - b);
  const cpu = process.cpuUsage(cpu0);
  return {
    tag: spec.tag,
    mode: spec.mode,
    elapsed,
    sent,
    answered: sent - errors,
    errors,
    statuses,
    accepted,
    acceptedBytes,
    bodyBytes,
    eventsPerSecond: accepted / elapsed,
    mbPerSecond: acceptedBytes / elapsed / 1e6,
    p50: q(ok, 0.5),
    p90: q(ok, 0.9),
    p99: q(ok, 0.99),
    max: ok.length ? ok[ok.length - 1]! : NaN,
    allP50: q(all, 0.5),
    allP99: q(all, 0.99),
    ...(spec.mode === "open" && { offeredEventsPerSecond: spec.eventsPerSecond, late }),
    socketsOpened: conns.length,
    okRequests,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
  };
}

if (import.meta.main) {
  const spec = JSON.parse(process.argv[2]!) as LoadSpec;
  const result = await runLoad(spec);
  console.log(JSON.stringify(result));
  process.exit(0);
}
