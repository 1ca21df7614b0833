import { publishDeadLetters, type DeadLetter } from "../../bus/dead-letters.ts";
import type { Bus } from "../../bus/connection.ts";
import { describeDestination, type DestinationOptions } from "../../config/destination.ts";
import { log } from "../../util/log.ts";
import {
  type Acknowledgement,
  NOTHING_WRITTEN,
  type Row,
  type Sink,
  type WriteOutcome,
  writeThrough,
} from "../sink.ts";
import { idempotencyKey } from "./idempotency.ts";
import { OrderedBatcher, type Queued } from "./ordered-batcher.ts";
import { RequestRateLimiter, sleep } from "./rate-limit.ts";
import { backoffMs, retryableStatus, retryAfterMs } from "./retry.ts";
import { ExportStats } from "./stats.ts";

/**
 * One event for a destination: its messageId (for the idempotency key, outcomes and dead letters),
 * its ordering key (userId, else anonymousId) and the body to send (the event, or its transform's output).
 */
export interface ExportRow extends Row {
  messageId: string;
  key: string;
  body: unknown;
}

/** How a kind of destination turns a batch of events (each already JSON) into a request. */
export interface Encoder {
  readonly url: string;
  readonly method: string;
  /** Called for every attempt: a signature carries the time it was made. */
  request(events: string[]): { body: string; headers: Record<string, string> };
}

/** What a hand-over is given up with once the sink is stopped: its messages stay unacknowledged, for redelivery. */
export class SinkStoppedError extends Error {
  readonly code = "SINK_STOPPED";
  constructor() {
    super("the export sink stopped");
    this.name = "SinkStoppedError";
  }
}

/** A dead letter of an export pipeline: what was to be sent, and the destination's answer. */
export interface ExportDeadLetter extends DeadLetter {
  kind: "export";
  /** The HTTP status that refused it; absent when the transformation failed. */
  status?: number;
  /** The ordering key it was sent under. */
  key: string;
}

export interface ExportSinkOptions {
  destination: DestinationOptions;
  encoder: Encoder;
  /** The pipeline's, so `/v1/pipelines` shows them. */
  stats?: ExportStats;
  /** Without one (scripts/dlq.ts --redrive), refused events are only returned: they are letters already. */
  deadLetters?: { bus: Bus; connection: string; pipeline: string };
  /** Per event: `loaded` with "sent (HTTP 200 in 35 ms)", or `failed` with why. */
  onOutcome?: (messageId: string, outcome: "loaded" | "failed", reason: string) => void;
}

/** One hand-over's events: counted down as they settle, its acknowledgement told at zero. */
interface Tracker {
  remaining: number;
  written: number;
  refused: { row: Row; reason: string }[];
  ack: Acknowledgement;
  settled: boolean;
}

interface Item {
  row: ExportRow;
  json: string;
  tracker: Tracker;
}

type Answer = { status: number; text: string; retryAfter: string | null } | { error: string; timeout: boolean };

/**
 * The HTTP export sink shared by the webhook and segment destinations: per-user ordered batching
 * (OrderedBatcher), requests with an Idempotency-Key that is the same on every attempt, retries of
 * 408/429/5xx/timeouts/connection errors for as long as it takes (capped backoff with jitter,
 * Retry-After honoured), dead letters for other answers, and a rate limit. A hand-over (`accept`) is acknowledged once
 * every event it was given is 2xx'd or dead-lettered, so acknowledging after it never loses one.
 * Several hand-overs may be pending at once: that is how events of different messages and users
 * proceed in parallel while each user's stay in order.
 */
export class ExportSink implements Sink {
  readonly table: string;
  readonly stats: ExportStats;
  readonly #batcher: OrderedBatcher<Item>;
  readonly #limiter?: RequestRateLimiter;
  readonly #abort = new AbortController();
  readonly #waiters: (() => void)[] = [];
  #lastWarn = 0;

  constructor(readonly options: ExportSinkOptions) {
    const d = options.destination;
    this.table = `${d.type}:${describeDestination(d).url}`;
    this.stats = options.stats ?? new ExportStats();
    if (d.requestsPerSecond) this.#limiter = new RequestRateLimiter(d.requestsPerSecond);
    this.#batcher = new OrderedBatcher<Item>(
      { maxItems: d.maxEvents, maxBytes: d.maxBytes, maxAgeMs: d.maxAgeMs, maxInFlight: d.maxInFlight },
      (batch) => this.#deliver(batch),
      () => {
        this.stats.queued = this.#batcher.size;
        if (this.#batcher.size < d.maxQueuedEvents) for (const w of this.#waiters.splice(0)) w();
      },
    );
  }

  /** Events handed over and not yet settled. */
  get queued(): number {
    return this.#batcher.size;
  }

  /** Resolves once fewer than `maxQueuedEvents` are queued (the pipeline's back-pressure). */
  room(): Promise<void> {
    if (this.#batcher.size < this.options.destination.maxQueuedEvents || this.#abort.signal.aborted)
      return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  accept(rows: Row[], ack: Acknowledgement): void {
    if (this.#abort.signal.aborted) {
      ack.failed(new SinkStoppedError());
      return;
    }
    if (!rows.length) {
      ack.stored(NOTHING_WRITTEN);
      return;
    }
    const tracker: Tracker = { remaining: rows.length, written: 0, refused: [], ack, settled: false };
    this.#batcher.push(
      (rows as ExportRow[]).map((r) => {
        const json = JSON.stringify(r.body ?? null);
        return { key: r.key, bytes: Buffer.byteLength(json), value: { row: r, json, tracker } };
      }),
    );
    this.stats.queued = this.#batcher.size;
  }

  write(rows: Row[]): Promise<WriteOutcome> {
    return writeThrough(this, rows);
  }

  /** Sends what is queued now, whatever its age. */
  flush(): void {
    this.#batcher.flush();
  }

  stop(): void {
    if (this.#abort.signal.aborted) return;
    this.#abort.abort(new SinkStoppedError());
    for (const q of this.#batcher.stop()) this.#fail(q.value.tracker);
    for (const w of this.#waiters.splice(0)) w();
  }

  #fail(t: Tracker): void {
    if (t.settled) return;
    t.settled = true;
    t.ack.failed(new SinkStoppedError());
  }

  #settle(item: Item, refusedReason?: string): void {
    const t = item.tracker;
    if (t.settled) return;
    if (refusedReason === undefined) t.written++;
    else t.refused.push({ row: item.row, reason: refusedReason });
    if (--t.remaining === 0) {
      t.settled = true;
      t.ack.stored({ written: t.written, refused: t.refused });
    }
  }

  async #deliver(batch: Queued<Item>[]): Promise<void> {
    try {
      await this.#attempts(batch);
    } catch (e) {
      // Stopped: the events stay unacknowledged and come again.
      for (const q of batch) this.#fail(q.value.tracker);
      if (!(e instanceof SinkStoppedError)) log.warn("export batch abandoned", { error: String(e) });
    }
  }

  async #attempts(batch: Queued<Item>[]): Promise<void> {
    const d = this.options.destination;
    const signal = this.#abort.signal;
    const key = idempotencyKey(batch.map((q) => q.value.row.messageId));
    const events = batch.map((q) => q.value.json);
    for (let attempt = 0; ; attempt++) {
      signal.throwIfAborted();
      await this.#limiter?.take(signal);
      const req = this.options.encoder.request(events);
      const started = performance.now();
      this.stats.inFlight++;
      let answer: Answer;
      try {
        answer = await this.#request(req, key);
      } finally {
        this.stats.inFlight--;
      }
      signal.throwIfAborted();
      const ms = Math.round(performance.now() - started);
      this.stats.observe("status" in answer ? String(answer.status) : answer.timeout ? "timeout" : "error", ms);
      if ("status" in answer && answer.status >= 200 && answer.status < 300) {
        this.stats.sent += batch.length;
        this.stats.lastSentAt = new Date().toISOString();
        const reason = `sent (HTTP ${answer.status} in ${ms} ms)`;
        for (const q of batch) {
          this.options.onOutcome?.(q.value.row.messageId, "loaded", reason);
          this.#settle(q.value);
        }
        return;
      }
      this.stats.failed++;
      const why =
        "status" in answer
          ? `HTTP ${answer.status}${answer.text ? `: ${answer.text}` : ""}`
          : answer.timeout
            ? `no answer within ${d.timeoutMs} ms`
            : `connection failed: ${answer.error}`;
      if (!("status" in answer) || retryableStatus(answer.status)) {
        this.stats.retried++;
        const wait =
          ("status" in answer ? retryAfterMs(answer.retryAfter, d.maxRetryAfterMs) : undefined) ??
          backoffMs(attempt, d.initialBackoffMs, d.maxBackoffMs);
        this.#warn(why, wait);
        await sleep(wait, signal);
        continue;
      }
      const status = answer.status;
      await this.#deadLetter(batch, why, status);
      this.stats.deadLettered += batch.length;
      for (const q of batch) {
        this.options.onOutcome?.(q.value.row.messageId, "failed", `refused: ${why}`);
        this.#settle(q.value, why);
      }
      return;
    }
  }

  async #request(req: { body: string; headers: Record<string, string> }, key: string): Promise<Answer> {
    const d = this.options.destination;
    const timeout = AbortSignal.timeout(d.timeoutMs);
    try {
      const res = await fetch(this.options.encoder.url, {
        method: this.options.encoder.method,
        headers: { "User-Agent": "Tributary", ...d.headers, ...req.headers, "Idempotency-Key": key },
        body: req.body,
        // A destination cannot send the events elsewhere: a redirect is an answer like any other 3xx.
        redirect: "manual",
        signal: AbortSignal.any([this.#abort.signal, timeout]),
      });
      const text = await readStart(res, 1024);
      return { status: res.status, text, retryAfter: res.headers.get("retry-after") };
    } catch (e) {
      if (this.#abort.signal.aborted) throw new SinkStoppedError();
      return { error: (e as Error).message ?? String(e), timeout: timeout.aborted };
    }
  }

  async #deadLetter(batch: Queued<Item>[], reason: string, status: number): Promise<void> {
    const to = this.options.deadLetters;
    if (!to) return;
    const at = new Date().toISOString();
    const letters: ExportDeadLetter[] = batch.map((q) => ({
      kind: "export",
      connection: to.connection,
      pipeline: to.pipeline,
      table: this.table,
      messageId: q.value.row.messageId,
      key: q.value.row.key,
      status,
      reason,
      at,
      event: q.value.row.body,
    }));
    // Acknowledging before the letters are stored would lose them: retry until JetStream takes them.
    for (let delay = 200; ; delay = Math.min(delay * 2, 5000)) {
      try {
        await publishDeadLetters(to.bus, letters);
        return;
      } catch (e) {
        log.warn("dead-letter publish failed; retrying", { pipeline: to.pipeline, error: String(e) });
        await sleep(delay, this.#abort.signal);
      }
    }
  }

  /** At most one line every 10 s per destination: a destination that is down would fill the log. */
  #warn(why: string, waitMs: number): void {
    const now = Date.now();
    if (now - this.#lastWarn < 10_000) return;
    this.#lastWarn = now;
    log.warn("destination answered with an error; retrying", {
      destination: this.table,
      error: why.slice(0, 200),
      retryInMs: waitMs,
      inFlight: this.stats.inFlight,
      queued: this.#batcher.size,
    });
  }
}

/** The first `max` bytes of a response body as text; the rest is not read (a hostile body may be endless). */
async function readStart(res: Response, max: number): Promise<string> {
  if (!res.body) return "";
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    while (total < max) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      total += value.length;
    }
  } finally {
    if (total >= max) reader.cancel().catch(() => {});
    else reader.releaseLock();
  }
  const all = new Uint8Array(total);
  let o = 0;
  for (const c of chunks) all.set(c, (o += c.length) - c.length);
  return new TextDecoder().decode(all.subarray(0, max));
}
