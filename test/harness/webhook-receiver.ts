import { createHmac, timingSafeEqual } from "node:crypto";
import type { Server } from "bun";

/**
 * A real HTTP receiver for export pipelines (PRODUCT.md §7), as a customer's endpoint would be: it
 * verifies the HMAC-SHA256 signature of `${X-Tributary-Timestamp}.${body}`, records every request
 * with its parsed events and Idempotency-Key, and answers from a schedule (500, 429 with
 * Retry-After, 400 with a body, a slow answer past the sender's timeout…), then 200. Nothing of
 * Tributary's code is used: what it sees is what a destination would see.
 */

/** How a request's body holds its events; `auto` tells them apart (a Segment `{batch}` too). */
export type BodyFormat = "json-array" | "ndjson" | "single" | "segment" | "auto";

export interface Answer {
  status: number;
  headers?: Record<string, string>;
  body?: string;
  /** Wait this long before answering: past the sender's timeoutMs, the sender has given up. */
  delayMs?: number;
}

export type SignatureCheck = "valid" | "invalid" | "missing" | "unchecked";

export interface ReceivedRequest {
  /** Arrival order, from 0. */
  n: number;
  /** performance.now() at arrival and when the answer went out. */
  at: number;
  answeredAt?: number;
  method: string;
  path: string;
  headers: Record<string, string>;
  body: string;
  events: Record<string, any>[];
  /** Why the body could not be read as `format`; the request is answered 400. */
  parseError?: string;
  idempotencyKey: string | null;
  signature: SignatureCheck;
  answer: Answer;
}

export interface ReceiverOptions {
  /** A given loopback port (a destination that comes up where a sender already points); default a free one. */
  port?: number;
  format?: BodyFormat;
  /** The signing secret: without it signatures are not checked (`unchecked`). */
  secret?: string;
  signatureHeader?: string;
  timestampHeader?: string;
  /** A bad or missing signature is answered 401 (and recorded) instead of only recorded. */
  enforceSignature?: boolean;
  /** Answers given to the first requests, in order, before `decide` and the default 200. */
  schedule?: Answer[];
  /** Per-request answer (after the schedule); undefined falls through to 200. */
  decide?: (r: ReceivedRequest) => Answer | undefined;
  /** The user of an event: userId, else anonymousId (as the contract orders them). */
  userOf?: (event: Record<string, any>) => string | undefined;
}

const OK: Answer = { status: 200, body: '{"ok":true}', headers: { "content-type": "application/json" } };
const defaultUser = (e: Record<string, any>) => (e.userId ?? e.anonymousId) as string | undefined;

export class WebhookReceiver {
  readonly requests: ReceivedRequest[] = [];
  /** Idempotency-Key → how many requests carried it. */
  readonly keys = new Map<string, number>();
  schedule: Answer[];
  decide?: (r: ReceivedRequest) => Answer | undefined;
  #server?: Server<undefined>;

  constructor(readonly o: ReceiverOptions = {}) {
    this.schedule = [...(o.schedule ?? [])];
    this.decide = o.decide;
  }

  static async start(o: ReceiverOptions = {}): Promise<WebhookReceiver> {
    const r = new WebhookReceiver(o);
    r.#server = Bun.serve({
      hostname: "127.0.0.1",
      port: o.port ?? 0,
      idleTimeout: 60,
      fetch: (req) => r.#handle(req),
    });
    return r;
  }

  get url(): string {
    return `http://127.0.0.1:${this.#server!.port}`;
  }

  async stop(): Promise<void> {
    await this.#server?.stop(true);
  }

  async #handle(req: Request): Promise<Response> {
    const body = await req.text();
    const headers: Record<string, string> = {};
    req.headers.forEach((v, k) => {
      headers[k] = v;
    });
    const r: ReceivedRequest = {
      n: this.requests.length,
      at: performance.now(),
      method: req.method,
      path: new URL(req.url).pathname,
      headers,
      body,
      events: [],
      idempotencyKey: req.headers.get("idempotency-key"),
      signature: this.#verify(req.headers, body),
      answer: OK,
    };
    try {
      r.events = parseEvents(body, this.o.format ?? "auto");
    } catch (e) {
      r.parseError = (e as Error).message;
    }
    this.requests.push(r);
    if (r.idempotencyKey) this.keys.set(r.idempotencyKey, (this.keys.get(r.idempotencyKey) ?? 0) + 1);
    r.answer = r.parseError
      ? { status: 400, body: `unreadable body: ${r.parseError}` }
      : this.o.enforceSignature && r.signature !== "valid"
        ? { status: 401, body: `signature ${r.signature}` }
        : (this.schedule.shift() ?? this.decide?.(r) ?? OK);
    if (r.answer.delayMs) await Bun.sleep(r.answer.delayMs);
    r.answeredAt = performance.now();
    return new Response(r.answer.body ?? "", { status: r.answer.status, headers: r.answer.headers });
  }

  #verify(h: Headers, body: string): SignatureCheck {
    if (this.o.secret === undefined) return "unchecked";
    const sig = h.get(this.o.signatureHeader ?? "x-tributary-signature");
    const ts = h.get(this.o.timestampHeader ?? "x-tributary-timestamp");
    if (!sig || !ts) return "missing";
    const want = createHmac("sha256", this.o.secret).update(`${ts}.${body}`).digest();
    const got = Buffer.from(sig.replace(/^sha256=/, ""), "hex");
    return got.length === want.length && timingSafeEqual(got, want) ? "valid" : "invalid";
  }

  /** Requests answered 2xx (a slow 200 counts: the receiver took it, whether the sender waited or not). */
  accepted(): ReceivedRequest[] {
    return this.requests.filter((r) => r.answer.status >= 200 && r.answer.status < 300);
  }

  /**
   * What an idempotent receiver stored: accepted requests in arrival order, a key already accepted
   * skipped (a retry of a batch whose answer the sender never saw). Requests without a key all count.
   */
  stored(): ReceivedRequest[] {
    const seen = new Set<string>();
    return this.accepted().filter((r) => {
      if (r.idempotencyKey === null) return true;
      if (seen.has(r.idempotencyKey)) return false;
      seen.add(r.idempotencyKey);
      return true;
    });
  }

  /** Per user, the messageIds an idempotent receiver stored, in the order it stored them. */
  byUser(): Map<string, string[]> {
    const out = new Map<string, string[]>();
    const userOf = this.o.userOf ?? defaultUser;
    for (const r of this.stored())
      for (const e of r.events) {
        const u = userOf(e) ?? "";
        out.set(u, [...(out.get(u) ?? []), String(e.messageId)]);
      }
    return out;
  }

  /** messageId → how many accepted requests held it (any key). */
  acceptedIds(): Map<string, number> {
    const out = new Map<string, number>();
    for (const r of this.accepted()) for (const e of r.events) out.set(e.messageId, (out.get(e.messageId) ?? 0) + 1);
    return out;
  }

  /** Every request carrying this key, in arrival order. */
  withKey(key: string): ReceivedRequest[] {
    return this.requests.filter((r) => r.idempotencyKey === key);
  }

  /** Polls `check` until it holds; fails with `what` and the receiver's tally. */
  async until(check: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
      if (Date.now() > deadline)
        throw new Error(
          `timed out waiting for ${what}: ${this.requests.length} requests, statuses ${JSON.stringify(this.statuses())}`,
        );
      await Bun.sleep(50);
    }
  }

  statuses(): Record<number, number> {
    const out: Record<number, number> = {};
    for (const r of this.requests) out[r.answer.status] = (out[r.answer.status] ?? 0) + 1;
    return out;
  }
}

/** A body's events as `format` says; throws on a body that is not that format. */
export function parseEvents(body: string, format: BodyFormat): Record<string, any>[] {
  const t = body.trim();
  if (format === "auto") {
    if (t.startsWith("[")) return parseEvents(t, "json-array");
    if (t.startsWith("{") && t.includes("\n")) return parseEvents(t, "ndjson");
    const one = JSON.parse(t);
    return Array.isArray(one?.batch) ? one.batch : [one];
  }
  if (format === "json-array") {
    const a = JSON.parse(t);
    if (!Array.isArray(a)) throw new Error("expected a JSON array");
    return a;
  }
  if (format === "ndjson")
    return t
      .split("\n")
      .filter((l) => l.trim() !== "")
      .map((l) => JSON.parse(l));
  const one = JSON.parse(t);
  if (format === "segment") {
    if (!Array.isArray(one?.batch)) throw new Error('expected {"batch": [...]}');
    return one.batch;
  }
  if (typeof one !== "object" || one === null || Array.isArray(one)) throw new Error("expected one JSON object");
  return [one];
}
