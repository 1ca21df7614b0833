import type { Bus } from "./connection.ts";
import { ShardWriter, type Entry } from "./shard-writer.ts";
import type { RecordKind } from "../event/envelope.ts";
import { DEDUP_SHARDS, shardOf } from "./subjects.ts";
import { log } from "../util/log.ts";

/**
 * How often each shard's dedup index is written as a snapshot (see dedup-snapshots.ts): a
 * restarted node reads at most this much of the stream on top of its snapshot.
 * TRIBUTARY_DEDUP_SNAPSHOT_SECONDS (0 turns snapshots off), validated at start by src/config/env.ts
 * and read here because every ingest thread builds its own writers.
 */
function snapshotEveryMs(): number {
  const s = Number(process.env.TRIBUTARY_DEDUP_SNAPSHOT_SECONDS ?? 60);
  return Number.isFinite(s) && s >= 0 ? s * 1000 : 60_000;
}

export interface AppendResult {
  /** Newly stored events. */
  stored: number;
  /** Events whose messageId was already stored on this connection within the dedup window. */
  duplicates: number;
}

/**
 * The durable log of accepted events: routes each event to its connection's shard writer.
 * `append` resolves only after JetStream acknowledged every event (or knew it already).
 */
export class EventLog {
  #writers = new Map<string, ShardWriter>();
  #snapshotTimer?: ReturnType<typeof setInterval>;
  #snapshotting?: Promise<void>;

  constructor(
    readonly bus: Bus,
    readonly options: { dedupWindowMs: number; timeoutMs: number; snapshotEveryMs?: number },
  ) {}

  #writer(connection: string, shard: number): ShardWriter {
    const subject = this.bus.layout.subject(connection, shard);
    let w = this.#writers.get(subject);
    if (!w) {
      // Headers (the id list) and the JSON array brackets fit in the margin.
      const maxPayload = Math.max(64 * 1024, (this.bus.nc.info?.max_payload ?? 1024 * 1024) - 64 * 1024);
      w = new ShardWriter(this.bus, subject, { ...this.options, maxPayloadBytes: maxPayload });
      this.#writers.set(subject, w);
      this.#scheduleSnapshots();
    }
    return w;
  }

  /** Called with the JSON bytes of every append (for back-pressure between stream polls). */
  onAppend?: (bytes: number) => void;

  /** `kind` is the record envelope the messages carry: raw webhook deliveries are appended as `raw`. */
  async append(connection: string, entries: Entry[], kind: RecordKind = "events"): Promise<AppendResult> {
    if (this.onAppend) {
      let bytes = 0;
      for (const e of entries) bytes += e.json.length;
      this.onAppend(bytes);
    }
    const groups: Entry[][] = Array.from({ length: DEDUP_SHARDS }, () => []);
    for (const e of entries) groups[shardOf(e.id)]!.push(e);
    const results = await Promise.all(
      groups.map((g, shard) =>
        g.length ? this.#writer(connection, shard).append(g, kind) : { stored: 0, duplicates: 0 },
      ),
    );
    return results.reduce((a, r) => ({ stored: a.stored + r.stored, duplicates: a.duplicates + r.duplicates }), {
      stored: 0,
      duplicates: 0,
    });
  }

  /** Loads the dedup index of every shard of these connections ahead of traffic. */
  async warm(
    connections: Iterable<string>,
    owns: (connection: string, shard: number) => boolean = () => true,
  ): Promise<void> {
    const all: Promise<unknown>[] = [];
    for (const c of connections)
      for (let s = 0; s < DEDUP_SHARDS; s++) if (owns(c, s)) all.push(this.#writer(c, s).warm());
    await Promise.all(all);
  }

  #scheduleSnapshots(): void {
    const every = this.options.snapshotEveryMs ?? snapshotEveryMs();
    if (this.#snapshotTimer || every === 0) return;
    this.#snapshotTimer = setInterval(() => {
      if (this.bus.nc.isClosed()) {
        clearInterval(this.#snapshotTimer);
        return;
      }
      void this.snapshot();
    }, every);
    this.#snapshotTimer.unref?.();
  }

  /**
   * Writes a snapshot of every shard index this log holds that learnt something since its last
   * one; one pass at a time. A node calls it once more when it stops gracefully.
   */
  snapshot(): Promise<void> {
    this.#snapshotting ??= (async () => {
      try {
        for (const w of this.#writers.values())
          await w
            .snapshot()
            .catch((e) =>
              log.warn("dedup snapshot not written", { subject: w.subject, error: String((e as Error).message ?? e) }),
            );
      } finally {
        this.#snapshotting = undefined;
      }
    })();
    return this.#snapshotting;
  }

  /** Shards whose index started from a snapshot: the sequence it covered and the ms it took to load. */
  get loadedSnapshots(): Map<string, { covered: number; ms: number }> {
    const out = new Map<string, { covered: number; ms: number }>();
    for (const [subject, w] of this.#writers) if (w.loadedSnapshot) out.set(subject, w.loadedSnapshot);
    return out;
  }

  /** Bytes of the dedup indexes this log holds (for a gauge beside indexedIds). */
  get indexBytes(): number {
    let n = 0;
    for (const w of this.#writers.values()) n += w.indexBytes;
    return n;
  }

  get indexedIds(): number {
    let n = 0;
    for (const w of this.#writers.values()) n += w.indexSize;
    return n;
  }
}
