import type { JetStreamManager } from "@nats-io/jetstream";
import { STREAM } from "./subjects.ts";
import { log } from "../util/log.ts";

export interface CapacityOptions {
  /** The stream's max_bytes; 0 means unlimited and the guard never trips. */
  maxBytes: number;
  /** Refuse from this share of max_bytes held by unloaded events, accept again below `resumeRatio`. */
  refuseRatio: number;
  resumeRatio: number;
  intervalMs: number;
}

export const capacityDefaults: CapacityOptions = { maxBytes: 0, refuseRatio: 0.9, resumeRatio: 0.8, intervalMs: 2000 };

/**
 * Back-pressure before loss. The events stream keeps what fits in max_bytes and discards its
 * oldest messages to make room; that is harmless while the oldest messages are ones every
 * pipeline already loaded. This watches the bytes still waiting for a pipeline (the largest
 * backlog of each connection's consumers, at the stream's mean message size) and trips before
 * they could fill the stream: the node then answers 503 rather than accept events that could push
 * unloaded ones out. It resumes on its own when the pipelines catch up.
 */
export class StreamCapacity {
  #full = false;
  #timer?: ReturnType<typeof setInterval>;
  backlogBytes = 0;

  constructor(
    readonly jsm: JetStreamManager,
    readonly options: CapacityOptions,
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
    this.backlogBytes += bytes;
    if (!this.#full && this.backlogBytes >= this.options.refuseRatio * this.options.maxBytes) {
      this.#full = true;
      log.warn("event stream nearly full of unloaded events: refusing new events with 503", { backlogBytes: Math.round(this.backlogBytes), maxBytes: this.options.maxBytes });
    }
  }

  async check(): Promise<void> {
    const info = await this.jsm.streams.info(STREAM);
    const mean = info.state.messages ? info.state.bytes / info.state.messages : 0;
    const bySubject = new Map<string, number>();
    for await (const c of this.jsm.consumers.list(STREAM)) {
      const key = c.config.filter_subject ?? "";
      bySubject.set(key, Math.max(bySubject.get(key) ?? 0, c.num_pending + c.num_ack_pending));
    }
    let pending = 0;
    for (const n of bySubject.values()) pending += n;
    this.backlogBytes = pending * mean;
    const { maxBytes, refuseRatio, resumeRatio } = this.options;
    const was = this.#full;
    if (!was && this.backlogBytes >= refuseRatio * maxBytes) this.#full = true;
    else if (was && this.backlogBytes < resumeRatio * maxBytes) this.#full = false;
    if (was !== this.#full) {
      (this.#full ? log.warn : log.info)(this.#full ? "event stream nearly full of unloaded events: refusing new events with 503" : "event stream has room again: accepting events", {
        backlogBytes: Math.round(this.backlogBytes),
        maxBytes,
      });
    }
  }
}
