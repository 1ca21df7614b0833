import { headers } from "@nats-io/nats-core";
import { DeliverPolicy, JetStreamApiCodes, JetStreamApiError } from "@nats-io/jetstream";
import type { Bus } from "./connection.ts";
import { BusUnavailableError } from "./errors.ts";
import { FingerprintIndex, type IndexRange } from "./fingerprint-index.ts";
import { SnapshotStore } from "./dedup-snapshots.ts";
import { readRange } from "./range-read.ts";
import { log } from "../util/log.ts";
import { KIND_HEADER, type RecordKind } from "../event/envelope.ts";

/** One event ready to store: its messageId and its serialised JSON. */
export interface Entry {
  id: string;
  json: string;
}

export interface ShardWriterOptions {
  dedupWindowMs: number;
  /** Upper bound on one JetStream message's body and id header (the server's max_payload, less a margin). */
  maxPayloadBytes: number;
  timeoutMs: number;
  /** Fingerprint width of the dedup index (1..16): fewer only in tests, to force collisions. */
  fingerprintBits?: number;
}

/** Header listing the messageIds a message holds, so a node can rebuild its index from headers alone. */
export const IDS_HEADER = "Tributary-Ids";
/**
 * What the dedup index holds for a record: its id within its kind. A raw delivery and an event
 * derived from it may carry the same id (an `events:` expression naming the event after its
 * delivery), and neither is a copy of the other. A message's ids take the kind of its KIND_HEADER;
 * one written before the header existed counts as events.
 */
const RAW_PREFIX = "\u0000raw\u0000";
const dedupKey = (kind: RecordKind | string | undefined, id: string) => (kind === "raw" ? `${RAW_PREFIX}${id}` : id);
const dedupKeys = (kind: RecordKind | string | undefined, ids: string[]) =>
  kind === "raw" ? ids.map((id) => dedupKey(kind, id)) : ids;

/** Bytes an id adds to the Tributary-Ids header: its JSON string and a comma. */
function idHeaderBytes(id: string): number {
  for (let i = 0; i < id.length; i++) {
    const c = id.charCodeAt(i);
    // Letters, digits, `_ . : -` are written as they are (the common case: UUIDs); anything else is measured.
    if (!((c >= 48 && c <= 58) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c === 46 || c === 45))
      return Buffer.byteLength(JSON.stringify(id)) + 1;
  }
  return id.length + 3;
}
/**
 * A message's body, the JSON array of its events, as bytes written once into one buffer: events
 * are nearly always ASCII, and then each UTF-16 unit is one byte. An event that is not (its UTF-8
 * differs in length from its text) sends the batch the old way, a joined string NATS encodes.
 */
export function payloadOf(jsons: readonly string[]): Uint8Array | string {
  let units = Math.max(2, jsons.length + 1); // brackets and commas
  for (const j of jsons) units += j.length;
  const out = Buffer.allocUnsafe(units);
  out[0] = 0x5b; // [
  let at = 1;
  for (let i = 0; i < jsons.length; i++) {
    if (i > 0) out[at++] = 0x2c; // ,
    const json = jsons[i]!;
    if (out.write(json, at, "utf8") !== json.length) return `[${jsons.join(",")}]`;
    at += json.length;
  }
  out[at] = 0x5d; // ]
  return out;
}

const kindOf = (h: { get(k: string): string } | undefined) => h?.get(KIND_HEADER) || undefined;

/** A message as the stream's get API returns it. */
type StoredMessage = Awaited<ReturnType<Bus["jsm"]["streams"]["getMessage"]>>;

/** JetStream refuses a message whose headers exceed 64 KiB: the id list of one message stays under it. */
const MAX_IDS_HEADER_BYTES = 60 * 1024;

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
 */
export class ShardWriter {
  /**
   * messageIds seen within the dedup window, as fingerprints (see fingerprint-index.ts): a hit
   * says which block of messages may hold the id. An id is written into the index once, when it
   * is queued (as `-no`, batch `no`), and a publish gives the batch's blocks its sequence.
   */
  #index: FingerprintIndex;
  #snapshots: SnapshotStore;
  /** The sequence the last snapshot covered, and whether one was looked for at start. */
  #snapshotSeq = 0;
  #snapshotTried = false;
  /**
   * Ids of the message ranges read lately, by first sequence: a retry storm re-reads the same few
   * blocks, the newest of which grows with every publish (only what it gained is read then).
   */
  #confirmed = new Map<number, { maxSeq: number; ids: Set<string> }>();
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
  #lastSeq = 0;
  /** When #lastSeq was reached. */
  #lastSeqAt = 0;
  /** Ids in the last message #learn read. */
  #lastLearnt = 0;
  /**
   * Counts the times ids stored by someone else (another node, or a publish of ours whose outcome
   * was unknown) entered the index. A batch opened at the current count holds only ids checked
   * against everything the index has learnt since: it need not be checked again before its publish.
   */
  #indexEpoch = 0;
  #synced = false;
  #pumping = false;

  constructor(
    readonly bus: Bus,
    readonly subject: string,
    readonly options: ShardWriterOptions,
  ) {
    this.#index = new FingerprintIndex(options.dedupWindowMs, { fingerprintBits: options.fingerprintBits });
    this.#snapshots = new SnapshotStore(bus, subject, options.dedupWindowMs);
    this.stream = bus.layout.streamOfSubject(subject);
  }

  /** The events stream the subject is stored in. */
  readonly stream: string;

  get indexSize(): number {
    return this.#index.size;
  }

  get indexBytes(): number {
    return this.#index.bytes;
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
    const hits = this.#index.lookup(key);
    if (!hits) return undefined;
    if (this.#inFlight.size) {
      const raw = kind === "raw";
      const id = raw ? key.slice(RAW_PREFIX.length) : key;
      for (const b of this.#inFlight.values())
        if ((b.kind === "raw") === raw && b.ids.length && (b.idSet ??= new Set(b.ids)).has(id)) return b;
    }
    return this.#stored(hits);
  }

  #stored(hits: IndexRange[] | undefined): IndexRange[] | undefined {
    const stored = hits?.filter((r) => r.maxSeq > 0);
    return stored?.length ? stored : undefined;
  }

  /** Loads the dedup index now rather than on the first request. */
  warm(): Promise<void> {
    if (this.#synced) return Promise.resolve();
    const batch = this.#newBatch();
    this.#queue.unshift(batch);
    this.#pump();
    return batch.done;
  }

  /** Resolves when every entry is stored (or was already); the count of new ones. */
  async append(entries: Entry[], kind: RecordKind = "events"): Promise<{ stored: number; duplicates: number }> {
    // Before this node's first write on the subject its index is empty: load it first, so the
    // answer counts a copy stored by another node (or before a restart) as the duplicate it is.
    if (!this.#synced && this.#lastSeq === 0) await this.warm();
    const waits = new Set<Promise<void>>();
    let stored = 0;
    let duplicates = 0;
    // The index as the lookups below see it; a suspect is enqueued after an await, its check as old as this.
    const checkedAt = this.#indexEpoch;
    let last: Batch | undefined;
    let mark = this.#index.writer();
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
        already = await this.#storedAmong(suspects.map((e) => dedupKey(kind, e.id)));
      } finally {
        this.#checks.splice(this.#checks.indexOf(checkedAt), 1);
      }
      mark = this.#index.writer(); // the index may have started a new generation meanwhile
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

  /** Which of these dedup keys (each an index hit) really are in the stream, read from the blocks of messages that may hold them. */
  async #storedAmong(keys: string[]): Promise<Set<string>> {
    const found = new Set<string>();
    const byRange = new Map<string, { range: IndexRange; keys: string[] }>();
    for (const key of keys)
      for (const range of this.#stored(this.#index.lookup(key)) ?? []) {
        const k = `${range.minSeq}-${range.maxSeq}`;
        const at = byRange.get(k);
        if (at) at.keys.push(key);
        else byRange.set(k, { range, keys: [key] });
      }
    for (const { range, keys: candidates } of byRange.values()) {
      let held = this.#confirmed.get(range.minSeq);
      if (!held || held.maxSeq < range.maxSeq) {
        const ids = held?.ids ?? new Set<string>();
        await readRange(
          this.bus,
          this.subject,
          held ? held.maxSeq + 1 : range.minSeq,
          range.maxSeq,
          this.options.timeoutMs,
          (h) => {
            const header = h?.get(IDS_HEADER);
            const kind = kindOf(h);
            if (header) for (const id of JSON.parse(header) as string[]) ids.add(dedupKey(kind, id));
          },
        );
        this.#confirmed.delete(range.minSeq); // newest last
        this.#confirmed.set(range.minSeq, (held = { maxSeq: range.maxSeq, ids }));
        if (this.#confirmed.size > 64) this.#confirmed.delete(this.#confirmed.keys().next().value!);
      }
      // Any id in those messages is stored, whichever block it is in.
      for (const id of candidates) if (held.ids.has(id)) found.add(id);
    }
    return found;
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
            expect: { lastSubjectSequence: this.#lastSeq },
            timeout: this.options.timeoutMs,
          });
          this.bus.observer?.published((performance.now() - started) / 1000);
          this.#lastSeq = ack.seq;
          this.#lastSeqAt = Date.now();
          this.#index.published(batch.no, ack.seq);
          if (this.#checks.length) this.#note(keys);
          break;
        } catch (e) {
          this.#synced = false;
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
      this.#index.abandoned(batch.no);
      this.#forgetLearnt();
    }
  }

  /**
   * Catches up on a few messages (another node's writes, a publish whose outcome was unknown) one
   * by one with the stream's get API: no consumer to create, which on a clustered stream is a
   * meta-leader round trip and, with a server down, can be placed on the dead one and time out.
   * False when the gap is longer than a walk is worth; the caller then reads it with a consumer.
   */
  async #walk(target: number, limit = 32): Promise<boolean> {
    for (let seq = this.#lastSeq + 1, n = 0; n < limit; n++) {
      let m: StoredMessage | null;
      try {
        m = await this.bus.jsm.streams.getMessage(this.stream, { seq, next_by_subj: this.subject } as unknown as {
          seq: number;
        });
      } catch (e) {
        throw new BusUnavailableError(`cannot read ${this.subject}: ${(e as Error).message}`, { cause: e });
      }
      if (!m) return true; // nothing left at or after seq (removed by the stream's limits meanwhile)
      const ids = m.header.get(IDS_HEADER);
      if (ids) this.#learn(kindOf(m.header), ids, m.seq);
      this.#lastSeq = m.seq;
      if (m.seq >= target) return true;
      seq = m.seq + 1;
    }
    return false;
  }

  /** Indexes the ids of a message read back from the stream (its Tributary-Ids header). */
  #learn(kind: string | undefined, header: string, seq: number): void {
    const keys = dedupKeys(kind, JSON.parse(header) as string[]);
    this.#lastLearnt = keys.length;
    this.#index.addAll(keys, seq);
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

  /**
   * Stores the index as a snapshot covering the subject up to the last sequence this writer
   * knows (see dedup-snapshots.ts), so a restarted node reads only what came after. False when
   * there was nothing new, or a snapshot at least as recent was there.
   */
  async snapshot(): Promise<boolean> {
    if (!this.#synced || this.#lastSeq === 0 || this.#lastSeq === this.#snapshotSeq) return false;
    const covered = this.#lastSeq;
    const saved = await this.#snapshots.save(this.#index, covered, this.#lastSeqAt);
    this.#snapshotSeq = covered;
    return saved;
  }

  /**
   * Before the first read of the window: the latest snapshot's tables, and the sequence they
   * cover, which the read then starts after. A snapshot missing, of another stream, older than the
   * window, or damaged leaves the index empty: the whole window is read, as without snapshots.
   */
  async #loadSnapshot(): Promise<void> {
    this.#snapshotTried = true;
    const started = performance.now();
    try {
      const loaded = await this.#snapshots.load(this.#index.fingerprintBits);
      if (!loaded) return;
      this.#index.restore(loaded.segments);
      this.#lastSeq = loaded.manifest.covered;
      this.#lastSeqAt = loaded.manifest.coveredAt;
      this.#snapshotSeq = loaded.manifest.covered;
      this.#loadedSnapshot = { covered: loaded.manifest.covered, ms: performance.now() - started };
    } catch (e) {
      log.warn("dedup snapshot not used; reading the whole window from the stream", {
        subject: this.subject,
        error: String((e as Error).message ?? e),
      });
    }
  }

  /** The snapshot this writer started from, if any: the sequence it covered and how long it took to load. */
  get loadedSnapshot(): { covered: number; ms: number } | undefined {
    return this.#loadedSnapshot;
  }
  #loadedSnapshot?: { covered: number; ms: number };

  /**
   * Reads the messageIds stored on this subject since what we know (at first, the whole dedup
   * window) from message headers only.
   */
  async #sync(): Promise<void> {
    if (this.#lastSeq === 0 && !this.#snapshotTried) await this.#loadSnapshot();
    let last: StoredMessage | null;
    try {
      last = await this.bus.jsm.streams.getMessage(this.stream, { last_by_subj: this.subject });
    } catch (e) {
      throw new BusUnavailableError(`cannot read ${this.subject}: ${(e as Error).message}`, { cause: e });
    }
    const target = last?.seq ?? 0;
    const horizon = Date.now() - this.options.dedupWindowMs;
    if (
      target > this.#lastSeq &&
      last &&
      last.time.getTime() >= horizon &&
      !(this.#lastSeq > 0 && (await this.#walk(target)))
    ) {
      const first = this.#lastSeq === 0;
      const consumer = await this.bus.js.consumers.get(this.stream, {
        filter_subjects: this.subject,
        headers_only: true,
        ...(first
          ? { deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(horizon).toISOString() }
          : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: this.#lastSeq + 1 }),
      });
      const messages = await consumer.consume({ max_messages: 1000 });
      const timer = setTimeout(() => messages.stop(), this.options.timeoutMs * 4);
      let reached = false;
      // A long read sizes the index once it has seen how many ids its first messages hold.
      let pending = first ? -1 : 0;
      let seen = 0;
      let idsSeen = 0;
      try {
        for await (const m of messages) {
          const ids = m.headers?.get(IDS_HEADER);
          if (ids) this.#learn(kindOf(m.headers), ids, m.seq);
          if (pending === -1) pending = m.info.pending;
          if (pending > 0 && ids && ++seen <= 64) {
            idsSeen += this.#lastLearnt;
            if (seen === 64) this.#index.reserve(Math.ceil((pending * idsSeen) / seen));
          }
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
    if (target !== this.#lastSeq) this.#lastSeqAt = Date.now();
    this.#lastSeq = target;
    this.#synced = true;
  }
}
