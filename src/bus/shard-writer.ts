import { headers } from "@nats-io/nats-core";
import { JetStreamApiCodes, JetStreamApiError } from "@nats-io/jetstream";
import type { Bus } from "./connection.ts";
import { BusUnavailableError } from "./errors.ts";
import type { IndexRange } from "./fingerprint-index.ts";
import {
  dedupKey,
  dedupKeys,
  type Entry,
  IDS_HEADER,
  idHeaderBytes,
  MAX_IDS_HEADER_BYTES,
  payloadOf,
  RAW_PREFIX,
} from "./shard-message.ts";
import { ShardSync, type ShardSyncOptions } from "./shard-sync.ts";
import { KIND_HEADER, type RecordKind } from "../event/envelope.ts";

export { type Entry, IDS_HEADER, payloadOf } from "./shard-message.ts";

export interface ShardWriterOptions extends ShardSyncOptions {
  /** Upper bound on one JetStream message's body and id header (the server's max_payload, less a margin). */
  maxPayloadBytes: number;
}

interface Batch {
  /** This writer's number for the batch; the index holds `-no` for its ids until their sequence is known. */
  no: number;
  kind: RecordKind;
  ids: string[];
  jsons: string[];
  bytes: number;
  /** Length of the Tributary-Ids header (a JSON array of the ids). */
  idBytes: number;
  /** The writer's {@link ShardWriter.indexEpoch} when the batch was opened: every id in it was checked since. */
  epoch: number;
  /** Its ids as a set, made when an index hit first asks whether the batch holds an id. */
  idSet?: Set<string>;
  done: Promise<void>;
  resolve: () => void;
  reject: (e: Error) => void;
}

function newBatch(no: number, kind: RecordKind = "events", epoch = 0): Batch {
  const b = { no, kind, ids: [], jsons: [], bytes: 2, idBytes: 2, epoch } as unknown as Batch;
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
 *
 * This file is the write side: the queue of batches, the dedup checks of what is appended, the
 * publish. What is stored, and the reads that learn it, are ShardSync's (shard-sync.ts); the
 * messages' format is shard-message.ts.
 */
export class ShardWriter {
  /** The dedup index and the subject's last sequence, and the reads that keep them current. */
  #sync: ShardSync;
  #nextBatch = 1;
  /** Batches queued or being published, by number. */
  #inFlight = new Map<number, Batch>();
  /**
   * Dedup keys learnt from someone else's messages while batches were queued, with the
   * {@link #indexEpoch} they were learnt at: a batch checks its ids against those learnt after it
   * was checked, exactly (no fingerprint, no read).
   */
  #learnt = new Map<string, number>();
  /**
   * The index epochs of the appends confirming index hits now: the ids they queue afterwards were
   * checked before they waited, so what was stored meanwhile, by anyone (us included), is noted
   * in #learnt for them.
   */
  #checks: number[] = [];
  #queue: Batch[] = [];
  /**
   * Counts the times ids stored by someone else (another node, or a publish of ours whose outcome
   * was unknown) entered the index. A batch opened at the current count holds only ids checked
   * against everything the index has learnt since: it need not be checked again before its publish.
   */
  #indexEpoch = 0;
  #pumping = false;

  constructor(
    readonly bus: Bus,
    readonly subject: string,
    readonly options: ShardWriterOptions,
  ) {
    this.#sync = new ShardSync(bus, subject, options, (keys) => this.#readBack(keys));
  }

  /** The events stream the subject is stored in. */
  get stream(): string {
    return this.#sync.stream;
  }

  get indexSize(): number {
    return this.#sync.index.size;
  }

  get indexBytes(): number {
    return this.#sync.index.bytes;
  }

  #newBatch(kind?: RecordKind, epoch?: number): Batch {
    const batch = newBatch(this.#nextBatch++, kind, epoch);
    this.#inFlight.set(batch.no, batch);
    return batch;
  }

  /**
   * Where a dedup key may be: undefined (not seen, or only in a batch that failed), the batch of
   * ours carrying it now, or the ranges of stored messages that may hold it (to confirm: a
   * fingerprint can match another id's).
   */
  #where(key: string, kind: RecordKind | string): IndexRange[] | Batch | undefined {
    const hits = this.#sync.index.lookup(key);
    if (!hits) return undefined;
    if (this.#inFlight.size) {
      const raw = kind === "raw";
      const id = raw ? key.slice(RAW_PREFIX.length) : key;
      for (const b of this.#inFlight.values())
        if ((b.kind === "raw") === raw && b.ids.length && (b.idSet ??= new Set(b.ids)).has(id)) return b;
    }
    return this.#sync.stored(hits);
  }

  /** Loads the dedup index now rather than on the first request. */
  warm(): Promise<void> {
    if (this.#sync.synced) return Promise.resolve();
    const batch = this.#newBatch();
    this.#queue.unshift(batch);
    this.#pump();
    return batch.done;
  }

  /** Resolves when every entry is stored (or was already); the count of new ones. */
  async append(entries: Entry[], kind: RecordKind = "events"): Promise<{ stored: number; duplicates: number }> {
    // Before this node's first write on the subject its index is empty: load it first, so the
    // answer counts a copy stored by another node (or before a restart) as the duplicate it is.
    if (!this.#sync.synced && this.#sync.lastSeq === 0) await this.warm();
    const waits = new Set<Promise<void>>();
    let stored = 0;
    let duplicates = 0;
    // The index as the lookups below see it; a suspect is enqueued after an await, its check as old as this.
    const checkedAt = this.#indexEpoch;
    let last: Batch | undefined;
    let mark = this.#sync.index.writer();
    const enqueue = (e: Entry, key: string) => {
      let batch = this.#queue[this.#queue.length - 1];
      // The event in the body, and its id in the Tributary-Ids header: max_payload counts both, and
      // the header has its own 64 KiB bound.
      const idSize = idHeaderBytes(e.id);
      const size = e.json.length + 1 + idSize;
      if (
        !batch ||
        (batch.ids.length > 0 &&
          (batch.kind !== kind ||
            batch.bytes + size > this.options.maxPayloadBytes ||
            batch.idBytes + idSize > MAX_IDS_HEADER_BYTES))
      ) {
        batch = this.#newBatch(kind, checkedAt);
        this.#queue.push(batch);
      }
      if (batch.ids.length === 0) {
        batch.kind = kind; // an empty batch (a warm-up) takes the first entry's kind
        batch.epoch = checkedAt;
      } else if (checkedAt < batch.epoch) batch.epoch = checkedAt;
      batch.ids.push(e.id);
      batch.idSet?.add(e.id);
      batch.jsons.push(e.json);
      batch.bytes += size;
      batch.idBytes += idSize;
      mark(key, -batch.no);
      if (batch !== last) waits.add((last = batch).done);
      stored++;
    };
    /** Queued or being published in one of our batches: answered when that batch is. */
    const inFlight = (at: Batch, key: string) => {
      if (at.kind !== kind || !(at.idSet ??= new Set(at.ids)).has(kind === "raw" ? key.slice(RAW_PREFIX.length) : key))
        return false;
      duplicates++;
      waits.add(at.done);
      return true;
    };
    let suspects: Entry[] | undefined;
    for (const e of entries) {
      const key = dedupKey(kind, e.id);
      const at = this.#where(key, kind);
      if (at === undefined) enqueue(e, key);
      else if (Array.isArray(at)) (suspects ??= []).push(e);
      else if (!inFlight(at, key)) enqueue(e, key);
    }
    if (suspects) {
      let already: Set<string>;
      this.#checks.push(checkedAt);
      try {
        already = await this.#sync.storedAmong(suspects.map((e) => dedupKey(kind, e.id)));
      } finally {
        this.#checks.splice(this.#checks.indexOf(checkedAt), 1);
      }
      mark = this.#sync.index.writer(); // the index may have started a new generation meanwhile
      for (const e of suspects) {
        const key = dedupKey(kind, e.id);
        // Stored meanwhile, by another node or by a batch of ours published while we read?
        if (already.has(key) || (this.#learnt.get(key) ?? -1) > checkedAt) duplicates++;
        else {
          // Queued meanwhile by another request? Then that batch answers for it.
          const at = this.#where(key, kind);
          if (!(at !== undefined && !Array.isArray(at) && inFlight(at, key))) enqueue(e, key);
        }
      }
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
        if (!this.#sync.synced) await this.#sync.sync();
        // Events another node (or an earlier attempt of ours) stored meanwhile are done: checked
        // again only when the index learnt of such writes since the batch's ids were checked.
        const keys = dedupKeys(batch.kind, batch.ids);
        let ids = batch.ids;
        let jsons = batch.jsons;
        if (this.#indexEpoch !== batch.epoch) {
          const keep = keys.map((k) => !((this.#learnt.get(k) ?? -1) > batch.epoch));
          if (keep.includes(false)) {
            ids = batch.ids.filter((_, i) => keep[i]);
            jsons = batch.jsons.filter((_, i) => keep[i]);
          }
        }
        if (ids.length === 0) break;
        const h = headers();
        h.set(IDS_HEADER, JSON.stringify(ids));
        h.set(KIND_HEADER, batch.kind);
        try {
          const started = performance.now();
          const ack = await this.bus.js.publish(this.subject, payloadOf(jsons), {
            headers: h,
            expect: { lastSubjectSequence: this.#sync.lastSeq },
            timeout: this.options.timeoutMs,
          });
          this.bus.observer?.published((performance.now() - started) / 1000);
          this.#sync.published(batch.no, ack.seq);
          if (this.#checks.length) this.#note(keys);
          break;
        } catch (e) {
          this.#sync.synced = false;
          if (e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamWrongLastSequence && attempt < 5) {
            this.bus.observer?.conflicted();
            continue;
          }
          throw e;
        }
      }
      batch.resolve();
    } catch (e) {
      batch.reject(
        e instanceof BusUnavailableError
          ? e
          : new BusUnavailableError(`JetStream did not confirm the write: ${(e as Error).message}`, { cause: e }),
      );
    } finally {
      // A batch that failed keeps its ids in the index, in blocks whose messages do not hold them:
      // they read as unseen once confirmed, and a retry queues them again.
      this.#inFlight.delete(batch.no);
      this.#sync.index.abandoned(batch.no);
      this.#forgetLearnt();
    }
  }

  /** Keys of a message read back from the stream (someone else's write, or ours of unknown outcome), now in the index. */
  #readBack(keys: readonly string[]): void {
    if (this.#checks.length || this.#queuedIds()) this.#note(keys);
    else this.#indexEpoch++;
  }

  /** Keys just stored (by someone else, or by us while an append was confirming hits). */
  #note(keys: readonly string[]): void {
    const epoch = ++this.#indexEpoch;
    for (const k of keys) this.#learnt.set(k, epoch);
  }

  /** Drops what no queued batch or confirming append can need: keys noted before all of them were checked. */
  #forgetLearnt(): void {
    if (this.#learnt.size === 0) return;
    let oldest = Number.POSITIVE_INFINITY;
    for (const b of this.#inFlight.values()) if (b.ids.length && b.epoch < oldest) oldest = b.epoch;
    for (const c of this.#checks) if (c < oldest) oldest = c;
    if (oldest === Number.POSITIVE_INFINITY) this.#learnt.clear();
    else if (this.#learnt.size > 10_000) for (const [k, e] of this.#learnt) if (e <= oldest) this.#learnt.delete(k);
  }

  /** Whether a batch holding ids is queued or being published (a warm-up's batch holds none). */
  #queuedIds(): boolean {
    for (const b of this.#inFlight.values()) if (b.ids.length) return true;
    return false;
  }

  /** Stores the dedup index as a snapshot (ShardSync.snapshot). */
  snapshot(): Promise<boolean> {
    return this.#sync.snapshot();
  }

  /** The snapshot this writer started from, if any: the sequence it covered and how long it took to load. */
  get loadedSnapshot(): { covered: number; ms: number } | undefined {
    return this.#sync.loadedSnapshot;
  }
}
