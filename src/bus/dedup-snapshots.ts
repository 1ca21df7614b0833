import { nanos } from "@nats-io/nats-core";
import { DeliverPolicy, StorageType } from "@nats-io/jetstream";
import type { Bus } from "./connection.ts";
import type { FingerprintIndex, Segment } from "./fingerprint-index.ts";
import { decodeSegment, encodeSegment, SnapshotFormatError } from "./index-snapshot.ts";
import { SUBJECT_ROOT } from "./subjects.ts";

/**
 * Snapshots of the dedup index, one per shard subject, on a JetStream stream of their own.
 *
 * Per shard subject and shared by nodes, not per node: what the index holds is a function of
 * the events stream (the ids stored on the subject up to a sequence), so any node may load any
 * node's snapshot, a node that restarts under another name still finds one, and with several
 * nodes the freshest is kept (a node does not write a snapshot older than the one there).
 *
 * Layout: each table of the index is a blob on `tributary.dedup.<connection>.<shard>.t.<table>_<version>`
 * in chunks under max_payload; `….m` holds the manifest (JSON), the last one wins. A table that
 * did not change since this writer stored it is referenced again, not rewritten: a table stops
 * changing once the next one starts, so a snapshot writes about one quarter window's table.
 */
export const SNAPSHOT_STREAM = "TRIBUTARY_DEDUP";
const ROOT = "tributary.dedup";
const FORMAT = 1;

interface TableEntry {
  id: string;
  version: number;
  bytes: number;
  hash: string;
  chunks: number;
  subject: string;
}

export interface SnapshotManifest {
  format: number;
  subject: string;
  /** The events stream's creation time: a snapshot of a stream since deleted and re-created is not this one's. */
  streamCreated: string;
  windowMs: number;
  fingerprintBits: number;
  /** Every id stored on the subject up to this sequence is in the tables. */
  covered: number;
  /** When the writer reached `covered` (ms). */
  coveredAt: number;
  /** The stored time of the message at `covered`: a stream that lost it (kill -9) and reused its sequence is told apart. */
  coveredTime: string;
  tables: TableEntry[];
}

const ensured = new WeakMap<Bus, Map<string, Promise<string>>>();

/** Creates the snapshot stream if needed; resolves to the creation time of `stream`, the events stream of the subject. */
function ensure(bus: Bus, windowMs: number, stream: string): Promise<string> {
  let byStream = ensured.get(bus);
  if (!byStream) ensured.set(bus, (byStream = new Map()));
  let p = byStream.get(stream);
  if (!p) {
    p = (async () => {
      const config = {
        name: SNAPSHOT_STREAM,
        subjects: [`${ROOT}.>`],
        storage: StorageType.File,
        num_replicas: bus.options.streamReplicas,
        // Tables still referenced are at most 1.25 windows old; anything older is a dead node's.
        max_age: nanos(windowMs * 1.5 + 3600_000),
      };
      await bus.jsm.streams.add(config).catch(async (e) => {
        if (!(await bus.jsm.streams.info(SNAPSHOT_STREAM).catch(() => undefined))) throw e;
      });
      return (await bus.jsm.streams.info(stream)).created;
    })();
    p.catch(() => byStream.delete(stream));
    byStream.set(stream, p);
  }
  return p;
}

const hashOf = (blob: Uint8Array) => Bun.hash(blob).toString(16);

export class SnapshotStore {
  /** Tables this writer stored, by id. */
  #saved = new Map<string, TableEntry>();
  readonly #base: string;
  /** The events stream the subject is stored in. */
  readonly #stream: string;

  constructor(
    readonly bus: Bus,
    readonly subject: string,
    readonly windowMs: number,
  ) {
    this.#base = `${ROOT}.${subject.slice(SUBJECT_ROOT.length + 1)}`;
    this.#stream = bus.layout.streamOfSubject(subject);
  }

  get #chunkBytes(): number {
    return Math.max(64 * 1024, (this.bus.nc.info?.max_payload ?? 1024 * 1024) - 64 * 1024);
  }

  /**
   * Stores `index` as covering the subject up to `covered`. The tables are copied before the
   * first await, so the caller passes a state where that holds; false if a snapshot at least as
   * recent was there already.
   */
  async save(index: FingerprintIndex, covered: number, coveredAt: number): Promise<boolean> {
    const tables: TableEntry[] = [];
    const writes: [TableEntry, Uint8Array][] = [];
    for (const seg of index.segments) {
      const prev = this.#saved.get(seg.id);
      if (prev && prev.version === seg.version) {
        tables.push(prev);
        continue;
      }
      const blob = encodeSegment(seg);
      const entry: TableEntry = {
        id: seg.id,
        version: seg.version,
        bytes: blob.byteLength,
        hash: hashOf(blob),
        chunks: Math.max(1, Math.ceil(blob.byteLength / this.#chunkBytes)),
        subject: `${this.#base}.t.${seg.id}_${seg.version}`,
      };
      tables.push(entry);
      writes.push([entry, blob]);
    }
    const streamCreated = await ensure(this.bus, this.windowMs, this.#stream);
    const there = await this.#manifest();
    if (there && there.streamCreated === streamCreated && there.covered >= covered) return false;
    const at = await this.bus.jsm.streams.getMessage(this.#stream, { seq: covered });
    if (!at || at.subject !== this.subject) return false; // gone already (limits): the next one then
    for (const [entry, blob] of writes) {
      const step = this.#chunkBytes;
      for (let at = 0; at < blob.byteLength; at += step)
        await this.bus.js.publish(entry.subject, blob.subarray(at, at + step));
    }
    const manifest: SnapshotManifest = {
      format: FORMAT,
      subject: this.subject,
      streamCreated,
      windowMs: this.windowMs,
      fingerprintBits: index.fingerprintBits,
      covered,
      coveredAt,
      coveredTime: at.timestamp,
      tables,
    };
    await this.bus.js.publish(`${this.#base}.m`, JSON.stringify(manifest));
    const keep = new Set(tables.map((t) => t.subject));
    for (const old of this.#saved.values())
      if (!keep.has(old.subject))
        await this.bus.jsm.streams.purge(SNAPSHOT_STREAM, { filter: old.subject }).catch(() => {});
    await this.bus.jsm.streams.purge(SNAPSHOT_STREAM, { filter: `${this.#base}.m`, keep: 1 }).catch(() => {});
    this.#saved = new Map(tables.map((t) => [t.id, t]));
    return true;
  }

  async #manifest(): Promise<SnapshotManifest | undefined> {
    const m = await this.bus.jsm.streams.getMessage(SNAPSHOT_STREAM, { last_by_subj: `${this.#base}.m` });
    return m ? (m.json() as SnapshotManifest) : undefined;
  }

  /**
   * The tables of the latest snapshot and the sequence they cover, or undefined when there is
   * none this index can use (another format, window or fingerprint width, another stream, older
   * than the window). Throws SnapshotFormatError for a snapshot that is there but damaged.
   */
  async load(
    fingerprintBits: number,
    now = Date.now(),
  ): Promise<{ segments: Segment[]; manifest: SnapshotManifest } | undefined> {
    const streamCreated = await ensure(this.bus, this.windowMs, this.#stream);
    const manifest = await this.#manifest();
    if (
      !manifest ||
      manifest.format !== FORMAT ||
      manifest.subject !== this.subject ||
      manifest.streamCreated !== streamCreated ||
      manifest.windowMs !== this.windowMs ||
      manifest.fingerprintBits !== fingerprintBits ||
      !(manifest.covered > 0) ||
      manifest.coveredAt < now - this.windowMs
    )
      return undefined;
    // The message it covers up to is still that one; or, removed since by the stream's limits, the
    // subject went on past it (a server that lost its last writes would be behind it).
    const at = await this.bus.jsm.streams.getMessage(this.#stream, { seq: manifest.covered });
    if (at) {
      if (at.subject !== this.subject || at.timestamp !== manifest.coveredTime) return undefined;
    } else {
      const last = await this.bus.jsm.streams.getMessage(this.#stream, { last_by_subj: this.subject });
      if (!last || last.seq < manifest.covered) return undefined;
    }
    const segments: Segment[] = [];
    for (const t of manifest.tables) {
      const blob = await this.#read(t);
      if (blob.byteLength !== t.bytes || hashOf(blob) !== t.hash)
        throw new SnapshotFormatError(`dedup snapshot table ${t.id} of ${this.subject} is damaged or incomplete`);
      segments.push(decodeSegment(t.id, blob));
    }
    // Those tables are stored already: the next snapshot references them rather than rewriting them.
    this.#saved = new Map(manifest.tables.map((t) => [t.id, t]));
    return { segments, manifest };
  }

  async #read(t: TableEntry): Promise<Uint8Array> {
    const consumer = await this.bus.js.consumers.get(SNAPSHOT_STREAM, {
      filter_subjects: t.subject,
      deliver_policy: DeliverPolicy.All,
    });
    const out = new Uint8Array(t.bytes);
    let at = 0;
    let n = 0;
    const messages = await consumer.consume({ max_messages: 16 });
    const timer = setTimeout(() => messages.stop(), this.bus.options.timeoutMs * 4 + t.chunks * 200);
    try {
      for await (const m of messages) {
        if (at + m.data.byteLength > out.byteLength)
          throw new SnapshotFormatError(`dedup snapshot table ${t.id} is longer than its manifest says`);
        out.set(m.data, at);
        at += m.data.byteLength;
        if (++n >= t.chunks) break;
      }
    } finally {
      clearTimeout(timer);
      messages.stop();
    }
    return out.subarray(0, at);
  }
}
