import type { JetStreamManager } from "@nats-io/jetstream";
import { STREAM } from "./subjects.ts";
import { log } from "../util/log.ts";

/** Defaults: `capacityDefaults` in src/config/env.ts. */
export interface CapacityOptions {
  /** The stream's max_bytes; 0 means unlimited and the guard never trips. */
  maxBytes: number;
  /** Refuse from this share of max_bytes held by unloaded events, accept again below `resumeRatio`. */
  refuseRatio: number;
  resumeRatio: number;
  intervalMs: number;
}

/** Stored bytes per byte of event JSON (id header, message overhead), erring high. */
const STORED_PER_JSON_BYTE = 1.5;

/**
 * Back-pressure before loss, in two layers. The events stream refuses new messages when it is
 * full (DiscardPolicy.New), so JetStream itself never drops an event no pipeline loaded: the
 * publish fails and the node answers 503. Before that hard stop, this guard watches the bytes
 * still waiting for a pipeline (the largest backlog of each connection's durable consumers, at
 * the stream's mean message size, plus what was stored since the last poll and the write rate
 * until the next one) and answers 503 early, so senders back off while there is room. And when the
 * stream holds more than the refuse ratio, it purges the prefix every pipeline has acknowledged:
 * events already loaded make room (the replay window shrinks) instead of new ones being refused.
 */
export class StreamCapacity {
  #full = false;
  /** Per events stream: its last sequence and when it was read. */
  #last = new Map<string, { seq: number; at: number }>();
  #timer?: ReturnType<typeof setInterval>;
  backlogBytes = 0;

  constructor(
    readonly jsm: JetStreamManager,
    readonly options: CapacityOptions,
    /** The events streams (one per partition); `options.maxBytes` is their total, split evenly. */
    readonly streams: readonly string[] = [STREAM],
  ) {}

  get full(): boolean {
    return this.#full;
  }

  start(): void {
    if (this.options.maxBytes <= 0) return;
    const tick = () => void this.check().catch(() => {});
    tick();
    this.#timer = setInterval(tick, this.options.intervalMs);
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** Bytes this node stored since the last poll count at once, so a burst cannot overshoot. */
  added(bytes: number): void {
    if (this.options.maxBytes <= 0) return;
    this.backlogBytes += bytes * STORED_PER_JSON_BYTE;
    if (!this.#full && this.backlogBytes >= this.options.refuseRatio * this.options.maxBytes) {
      this.#full = true;
      log.warn("event stream nearly full of unloaded events: refusing new events with 503", {
        backlogBytes: Math.round(this.backlogBytes),
        maxBytes: this.options.maxBytes,
      });
    }
  }

  /**
   * Polls every partition's stream. The guard trips on the total backlog against the total
   * budget, or on one partition's backlog against its share: a partition whose pipelines fell
   * behind fills on its own, and the node cannot tell which partitions a request's events will hit
   * before it parsed them, so it refuses them all (a 503 is retried; a full stream is not).
   */
  async check(): Promise<void> {
    const { maxBytes, refuseRatio, resumeRatio } = this.options;
    const share = maxBytes / this.streams.length;
    let total = 0;
    let worst = 0;
    for (const stream of this.streams) {
      const backlog = await this.#checkStream(stream, share);
      total += backlog;
      worst = Math.max(worst, backlog);
    }
    this.backlogBytes = total;
    const was = this.#full;
    const over = (ratio: number) => total >= ratio * maxBytes || worst >= ratio * share;
    if (!was && over(refuseRatio)) this.#full = true;
    else if (was && !over(resumeRatio)) this.#full = false;
    if (was !== this.#full) {
      (this.#full ? log.warn : log.info)(
        this.#full
          ? "event stream nearly full of unloaded events: refusing new events with 503"
          : "event stream has room again: accepting events",
        { backlogBytes: Math.round(this.backlogBytes), maxBytes, worstPartitionBytes: Math.round(worst) },
      );
    }
  }

  /** One stream's bytes waiting for a pipeline (and purges what every pipeline loaded when it is near its share). */
  async #checkStream(stream: string, share: number): Promise<number> {
    const info = await this.jsm.streams.info(stream);
    const mean = info.state.messages ? info.state.bytes / info.state.messages : 0;
    const bySubject = new Map<string, number>();
    let floor = Number.MAX_SAFE_INTEGER;
    for await (const c of this.jsm.consumers.list(stream)) {
      // Only pipelines' durable consumers: ephemeral ones (a node re-reading a shard's ids, a
      // `nats sub`) wait for nobody.
      if (!c.config.durable_name) continue;
      const key = c.config.filter_subject ?? "";
      // What purging cannot free yet: not delivered, plus everything delivered above the ack floor.
      // One message left unacknowledged (its node died; it comes back after ack_wait) holds the
      // floor, and every acknowledged message above it keeps its space until then.
      const aboveFloor = Math.max(
        c.num_ack_pending,
        (c.delivered?.consumer_seq ?? 0) - (c.ack_floor?.consumer_seq ?? 0),
      );
      bySubject.set(key, Math.max(bySubject.get(key) ?? 0, c.num_pending + aboveFloor));
      floor = Math.min(floor, c.ack_floor?.stream_seq ?? 0);
    }
    let pending = 0;
    for (const n of bySubject.values()) pending += n;
    const now = Date.now();
    // Messages written since the last poll by every node, at the mean size: the rate to expect
    // until the next poll.
    const last = this.#last.get(stream);
    const written = last ? Math.max(0, info.state.last_seq - last.seq) * mean : 0;
    const rate = last ? written / Math.max(1, now - last.at) : 0;
    this.#last.set(stream, { seq: info.state.last_seq, at: now });
    if (
      info.state.bytes >= this.options.refuseRatio * share &&
      floor !== Number.MAX_SAFE_INTEGER &&
      floor >= info.state.first_seq
    ) {
      const purged = await this.jsm.streams.purge(stream, { seq: floor + 1 }).catch(() => undefined);
      if (purged?.purged)
        log.info("event stream near its limit: purged events every pipeline has loaded", {
          stream,
          purged: purged.purged,
          upTo: floor,
        });
    }
    return pending * mean + rate * this.options.intervalMs;
  }
}
