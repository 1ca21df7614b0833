import { DeliverPolicy } from "@nats-io/jetstream";
import type { Bus } from "./connection.ts";
import { BusUnavailableError } from "./errors.ts";
import { FingerprintIndex, type IndexRange } from "./fingerprint-index.ts";
import { SnapshotStore } from "./dedup-snapshots.ts";
import { readRange } from "./range-read.ts";
import { dedupKey, dedupKeys, IDS_HEADER, kindOf, type StoredMessage } from "./shard-message.ts";
import { log } from "../util/log.ts";

/**
 * Messages a catch-up reads one by one before it takes a consumer: the usual gap is a few messages
 * another node wrote, and on a clustered stream a consumer costs a meta-leader round trip.
 */
const CATCH_UP_GETS = 32;

export interface ShardSyncOptions {
  dedupWindowMs: number;
  timeoutMs: number;
  /** Fingerprint width of the dedup index (1..16): fewer only in tests, to force collisions. */
  fingerprintBits?: number;
}

/**
 * What one node knows of what is stored on one shard subject, read from the stream: the dedup
 * index of the messageIds stored within the window and the subject's last sequence. It catches up
 * (`sync`) on what others stored since, from a snapshot at first, reads message headers to confirm
 * index hits (`storedAmong`), and writes snapshots. The shard writer (shard-writer.ts) publishes
 * against it and is told, through `learnt`, of every message it reads back.
 */
export class ShardSync {
  /**
   * messageIds seen within the dedup window, as fingerprints (see fingerprint-index.ts): a hit
   * says which block of messages may hold the id. An id is written into the index once, when it
   * is queued (as `-no`, batch `no`), and a publish gives the batch's blocks its sequence.
   */
  readonly index: FingerprintIndex;
  #snapshots: SnapshotStore;
  /** The sequence the last snapshot covered, and whether one was looked for at start. */
  #snapshotSeq = 0;
  #snapshotTried = false;
  /**
   * Ids of the message ranges read lately, by first sequence: a retry storm re-reads the same few
   * blocks, the newest of which grows with every publish (only what it gained is read then).
   */
  #confirmed = new Map<number, { maxSeq: number; ids: Set<string> }>();
  /** The subject's last sequence as this node knows it: what the next publish expects. */
  lastSeq = 0;
  /** When {@link lastSeq} was reached. */
  lastSeqAt = 0;
  /** Ids in the last message #learn read. */
  #lastLearnt = 0;
  /** Whether {@link lastSeq} is the subject's last (false after a publish failed: someone may have written). */
  synced = false;
  /** The events stream the subject is stored in. */
  readonly stream: string;

  constructor(
    readonly bus: Bus,
    readonly subject: string,
    readonly options: ShardSyncOptions,
    /** Told the dedup keys of every message read back, once they are in the index. */
    readonly learnt: (keys: readonly string[]) => void,
  ) {
    this.index = new FingerprintIndex(options.dedupWindowMs, { fingerprintBits: options.fingerprintBits });
    this.#snapshots = new SnapshotStore(bus, subject, options.dedupWindowMs);
    this.stream = bus.layout.streamOfSubject(subject);
  }

  /** A publish of ours was stored at `seq`. */
  published(batch: number, seq: number): void {
    this.lastSeq = seq;
    this.lastSeqAt = Date.now();
    this.index.published(batch, seq);
  }

  stored(hits: IndexRange[] | undefined): IndexRange[] | undefined {
    const stored = hits?.filter((r) => r.maxSeq > 0);
    return stored?.length ? stored : undefined;
  }

  /** Which of these dedup keys (each an index hit) really are in the stream, read from the blocks of messages that may hold them. */
  async storedAmong(keys: string[]): Promise<Set<string>> {
    const found = new Set<string>();
    const byRange = new Map<string, { range: IndexRange; keys: string[] }>();
    for (const key of keys)
      for (const range of this.stored(this.index.lookup(key)) ?? []) {
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

  /** Indexes the ids of a message read back from the stream (its Tributary-Ids header). */
  #learn(kind: string | undefined, header: string, seq: number): void {
    const keys = dedupKeys(kind, JSON.parse(header) as string[]);
    this.#lastLearnt = keys.length;
    this.index.addAll(keys, seq);
    this.learnt(keys);
  }

  /**
   * Stores the index as a snapshot covering the subject up to the last sequence this writer
   * knows (see dedup-snapshots.ts), so a restarted node reads only what came after. False when
   * there was nothing new, or a snapshot at least as recent was there.
   */
  async snapshot(): Promise<boolean> {
    if (!this.synced || this.lastSeq === 0 || this.lastSeq === this.#snapshotSeq) return false;
    const covered = this.lastSeq;
    const saved = await this.#snapshots.save(this.index, covered, this.lastSeqAt);
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
      const loaded = await this.#snapshots.load(this.index.fingerprintBits);
      if (!loaded) return;
      this.index.restore(loaded.segments);
      this.lastSeq = loaded.manifest.covered;
      this.lastSeqAt = loaded.manifest.coveredAt;
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
  async sync(): Promise<void> {
    if (this.lastSeq === 0 && !this.#snapshotTried) await this.#loadSnapshot();
    let last: StoredMessage | null;
    try {
      last = await this.bus.jsm.streams.getMessage(this.stream, { last_by_subj: this.subject });
    } catch (e) {
      throw new BusUnavailableError(`cannot read ${this.subject}: ${(e as Error).message}`, { cause: e });
    }
    const target = last?.seq ?? 0;
    const before = this.lastSeq;
    const horizon = Date.now() - this.options.dedupWindowMs;
    if (target > this.lastSeq && last && last.time.getTime() >= horizon) {
      if (this.lastSeq > 0) {
        // Another node's writes since (or a publish whose outcome was unknown): a few gets, then a
        // consumer, and gets again if the consumer fails (nats-server 2.9 may place it on a server
        // that is down). A read cut short goes on from the last message read.
        await readRange(
          this.bus,
          this.subject,
          this.lastSeq + 1,
          target,
          this.options.timeoutMs,
          (h, seq) => {
            const ids = h?.get(IDS_HEADER);
            if (ids) this.#learn(kindOf(h), ids, seq);
            this.lastSeq = seq;
          },
          CATCH_UP_GETS,
        );
      } else {
        const reached = await this.#read(horizon, target).catch((e) => {
          throw new BusUnavailableError(`cannot read ${this.subject}: ${(e as Error).message}`, { cause: e });
        });
        if (!reached) throw new BusUnavailableError(`timed out reading ${this.subject} up to sequence ${target}`);
      }
    }
    if (target !== before) this.lastSeqAt = Date.now();
    this.lastSeq = target;
    this.synced = true;
  }

  /**
   * The whole window's ids with a headers-only consumer from the horizon (a start without a usable
   * snapshot); false when it did not reach `target` in time.
   */
  async #read(horizon: number, target: number): Promise<boolean> {
    const consumer = await this.bus.js.consumers.get(this.stream, {
      filter_subjects: this.subject,
      headers_only: true,
      deliver_policy: DeliverPolicy.StartTime,
      opt_start_time: new Date(horizon).toISOString(),
    });
    const messages = await consumer.consume({ max_messages: 1000 });
    const timer = setTimeout(() => messages.stop(), this.options.timeoutMs * 4);
    let reached = false;
    // A long read sizes the index once it has seen how many ids its first messages hold.
    let pending = -1;
    let seen = 0;
    let idsSeen = 0;
    try {
      for await (const m of messages) {
        const ids = m.headers?.get(IDS_HEADER);
        if (ids) this.#learn(kindOf(m.headers), ids, m.seq);
        // Known up to here: a read cut short goes on from this message, not again from the start.
        this.lastSeq = m.seq;
        if (pending === -1) pending = m.info.pending;
        if (pending > 0 && ids && ++seen <= 64) {
          idsSeen += this.#lastLearnt;
          if (seen === 64) this.index.reserve(Math.ceil((pending * idsSeen) / seen));
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
    return reached;
  }
}
