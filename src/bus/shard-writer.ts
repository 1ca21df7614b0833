import { headers } from "@nats-io/nats-core";
import { DeliverPolicy, JetStreamApiError } from "@nats-io/jetstream";
import type { Bus } from "./connection.ts";
import { BusUnavailableError } from "./errors.ts";
import { STREAM } from "./subjects.ts";

/** One event ready to store: its messageId and its serialised JSON. */
export interface Entry {
  id: string;
  json: string;
}

export interface ShardWriterOptions {
  dedupWindowMs: number;
  /** Upper bound on one JetStream message (the server's max_payload, less headers). */
  maxPayloadBytes: number;
  timeoutMs: number;
}

/** Header listing the messageIds a message holds, so a node can rebuild its index from headers alone. */
export const IDS_HEADER = "Tributary-Ids";
const WRONG_LAST_SEQUENCE = 10071;

interface Batch {
  ids: string[];
  jsons: string[];
  bytes: number;
  done: Promise<void>;
  resolve: () => void;
  reject: (e: Error) => void;
}

function newBatch(): Batch {
  const b = { ids: [], jsons: [], bytes: 2 } as unknown as Batch;
  b.done = new Promise<void>((res, rej) => {
    b.resolve = res;
    b.reject = rej;
  });
  b.done.catch(() => {}); // observed by whoever awaits it; never an unhandled rejection
  return b;
}

/**
 * The single writer of one shard subject on this node. It coalesces whatever arrives while a
 * publish is in flight into the next publish (one JetStream message holding many events), and
 * deduplicates by messageId against every event stored on the subject within the dedup window.
 *
 * Several nodes may write the same subject: each publish says which sequence it expects to be
 * the subject's last, so a publish based on a stale view fails, the writer reads what the other
 * node stored, drops the now-duplicate events and publishes the rest. The same catch-up runs
 * after a publish whose outcome is unknown (timeout, NATS down), so a retried event is stored
 * once even if the first attempt did land.
 */
export class ShardWriter {
  /** messageId → when it was stored (ms). Insertion order is storage order, for expiry. */
  #stored = new Map<string, number>();
  /** messageIds queued or being published → the batch that carries them. */
  #pending = new Map<string, Batch>();
  #queue: Batch[] = [];
  #lastSeq = 0;
  #synced = false;
  #pumping = false;

  constructor(
    readonly bus: Bus,
    readonly subject: string,
    readonly options: ShardWriterOptions,
  ) {}

  get indexSize(): number {
    return this.#stored.size;
  }

  /** Loads the dedup index now rather than on the first request. */
  warm(): Promise<void> {
    if (this.#synced) return Promise.resolve();
    const batch = newBatch();
    this.#queue.unshift(batch);
    this.#pump();
    return batch.done;
  }

  /** Resolves when every entry is stored (or was already); the count of new ones. */
  async append(entries: Entry[]): Promise<{ stored: number; duplicates: number }> {
    const waits = new Set<Promise<void>>();
    let stored = 0;
    let duplicates = 0;
    for (const e of entries) {
      if (this.#stored.has(e.id)) {
        duplicates++;
        continue;
      }
      const inFlight = this.#pending.get(e.id);
      if (inFlight) {
        duplicates++;
        waits.add(inFlight.done);
        continue;
      }
      let batch = this.#queue[this.#queue.length - 1];
      const size = e.json.length + 1;
      if (!batch || (batch.ids.length > 0 && batch.bytes + size > this.options.maxPayloadBytes)) {
        batch = newBatch();
        this.#queue.push(batch);
      }
      batch.ids.push(e.id);
      batch.jsons.push(e.json);
      batch.bytes += size;
      this.#pending.set(e.id, batch);
      waits.add(batch.done);
      stored++;
    }
    this.#pump();
    await Promise.all(waits);
    return { stored, duplicates };
  }

  #pump(): void {
    if (this.#pumping) return;
    this.#pumping = true;
    void (async () => {
      try {
        for (let batch = this.#queue.shift(); batch; batch = this.#queue.shift()) await this.#write(batch);
      } finally {
        this.#pumping = false;
        if (this.#queue.length) this.#pump();
      }
    })();
  }

  async #write(batch: Batch): Promise<void> {
    try {
      for (let attempt = 0; ; attempt++) {
        if (!this.#synced) await this.#sync();
        this.#expire();
        // Events another node (or an earlier attempt of ours) stored meanwhile are done.
        const keep = batch.ids.map((id) => !this.#stored.has(id));
        const ids = batch.ids.filter((_, i) => keep[i]);
        if (ids.length === 0) break;
        const jsons = ids.length === batch.ids.length ? batch.jsons : batch.jsons.filter((_, i) => keep[i]);
        const h = headers();
        h.set(IDS_HEADER, JSON.stringify(ids));
        try {
          const ack = await this.bus.js.publish(this.subject, `[${jsons.join(",")}]`, {
            headers: h,
            expect: { lastSubjectSequence: this.#lastSeq },
            timeout: this.options.timeoutMs,
          });
          this.#lastSeq = ack.seq;
          const now = Date.now();
          for (const id of ids) this.#stored.set(id, now);
          break;
        } catch (e) {
          this.#synced = false;
          if (e instanceof JetStreamApiError && e.code === WRONG_LAST_SEQUENCE && attempt < 5) continue;
          throw e;
        }
      }
      batch.resolve();
    } catch (e) {
      batch.reject(e instanceof BusUnavailableError ? e : new BusUnavailableError(`JetStream did not confirm the write: ${(e as Error).message}`, { cause: e }));
    } finally {
      for (const id of batch.ids) if (this.#pending.get(id) === batch) this.#pending.delete(id);
    }
  }

  #expire(): void {
    const horizon = Date.now() - this.options.dedupWindowMs;
    for (const [id, at] of this.#stored) {
      if (at >= horizon) break;
      this.#stored.delete(id);
    }
  }

  /**
   * Reads the messageIds stored on this subject since what we know (at first, the whole dedup
   * window) from message headers only.
   */
  async #sync(): Promise<void> {
    let last;
    try {
      last = await this.bus.jsm.streams.getMessage(STREAM, { last_by_subj: this.subject });
    } catch (e) {
      throw new BusUnavailableError(`cannot read ${this.subject}: ${(e as Error).message}`, { cause: e });
    }
    const target = last?.seq ?? 0;
    const horizon = Date.now() - this.options.dedupWindowMs;
    if (target > this.#lastSeq && last && last.time.getTime() >= horizon) {
      const first = this.#lastSeq === 0;
      const consumer = await this.bus.js.consumers.get(STREAM, {
        filter_subjects: this.subject,
        headers_only: true,
        ...(first
          ? { deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(horizon).toISOString() }
          : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: this.#lastSeq + 1 }),
      });
      const messages = await consumer.consume({ max_messages: 1000 });
      const timer = setTimeout(() => messages.stop(), this.options.timeoutMs * 4);
      let reached = false;
      try {
        for await (const m of messages) {
          const ids = m.headers?.get(IDS_HEADER);
          const at = Math.floor(m.info.timestampNanos / 1e6);
          if (ids) for (const id of JSON.parse(ids) as string[]) this.#stored.set(id, at);
          if (m.seq >= target) {
            reached = true;
            break;
          }
        }
      } finally {
        clearTimeout(timer);
        messages.stop();
      }
      if (!reached) throw new BusUnavailableError(`timed out reading ${this.subject} up to sequence ${target}`);
    }
    this.#lastSeq = target;
    this.#synced = true;
  }
}
