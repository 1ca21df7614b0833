import type { Bus } from "./connection.ts";
import { ShardWriter, type Entry } from "./shard-writer.ts";
import type { RecordKind } from "../event/envelope.ts";
import { DEDUP_SHARDS, shardOf, shardSubject } from "./subjects.ts";

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

  constructor(
    readonly bus: Bus,
    readonly options: { dedupWindowMs: number; timeoutMs: number },
  ) {}

  #writer(connection: string, shard: number): ShardWriter {
    const subject = shardSubject(connection, shard);
    let w = this.#writers.get(subject);
    if (!w) {
      // Headers (the id list) and the JSON array brackets fit in the margin.
      const maxPayload = Math.max(64 * 1024, (this.bus.nc.info?.max_payload ?? 1024 * 1024) - 64 * 1024);
      w = new ShardWriter(this.bus, subject, { ...this.options, maxPayloadBytes: maxPayload });
      this.#writers.set(subject, w);
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
  async warm(connections: Iterable<string>): Promise<void> {
    const all: Promise<unknown>[] = [];
    for (const c of connections) for (let s = 0; s < DEDUP_SHARDS; s++) all.push(this.#writer(c, s).warm());
    await Promise.all(all);
  }

  get indexedIds(): number {
    let n = 0;
    for (const w of this.#writers.values()) n += w.indexSize;
    return n;
  }
}
