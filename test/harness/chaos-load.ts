/**
 * The clients of a chaos run: several senders posting batches of events with unique
 * messageIds, each retrying a refused or unanswered batch with the same ids (as Segment's and
 * RudderStack's SDKs do), so the dedup promise is exercised as well as durability.
 *
 * Ground truth for the final check:
 *  - `accepted`: every id of every batch that got a 2xx (on any attempt) — each must be stored once;
 *  - `unconfirmed`: ids sent but never answered 2xx (refused, or no answer) — they may or may not be
 *    stored (a 503 can follow a write that landed; a request cut by a kill may have been stored).
 */

export interface Attempt {
  /** When the answer (or the failure) came, ms since the load started. */
  at: number;
  /** HTTP status; 0 = no answer (connection refused or cut, or timed out). */
  status: number;
  ms: number;
  events: number;
  /** Which node it went to. */
  target: string;
  /** For a refusal: its error text (to tell the back-pressure guard's 503 from JetStream's). */
  reason?: string;
}

export interface ChaosLoadOptions {
  /** The nodes a client may send to right now (a load balancer's healthy set); empty = wait. */
  targets: () => { name: string; url: string }[];
  writeKey: string;
  clients: number;
  eventsPerRequest: number;
  /** Pause between a client's batches. */
  pauseMs: number;
  /** Attempts per batch before the client gives it up (its ids stay unconfirmed). */
  maxAttempts: number;
  /** A request without an answer after this counts as no answer. */
  timeoutMs: number;
  prefix: string;
}

export class ChaosLoad {
  readonly accepted: string[] = [];
  /** Each accepted batch: its ids' prefix, when and where it was accepted (to place a loss in the schedule). */
  readonly acceptedBatches = new Map<string, { at: number; target: string; attempt: number }>();
  readonly unconfirmed = new Set<string>();
  readonly attempts: Attempt[] = [];
  /** 2xx answers whose body did not say every event was accepted (would be a bug). */
  readonly anomalies: string[] = [];
  /** Refusals by status and error text. */
  readonly reasons = new Map<string, number>();
  /** Batches given up after maxAttempts. */
  abandoned = 0;
  /** Batches that got a 2xx after at least one failed attempt. */
  retriedOk = 0;
  readonly t0 = performance.now();
  #running = true;
  #clients: Promise<void>[];
  #rr = 0;

  constructor(readonly o: ChaosLoadOptions) {
    this.#clients = Array.from({ length: o.clients }, (_, c) => this.#client(c));
  }

  now(): number {
    return performance.now() - this.t0;
  }

  #pick(): { name: string; url: string } | undefined {
    const t = this.o.targets();
    if (!t.length) return undefined;
    return t[this.#rr++ % t.length];
  }

  #body(ids: string[], c: number): string {
    return JSON.stringify(
      ids.map((id, i) => ({
        type: "track",
        event: "Chaos",
        userId: `u${c}`,
        messageId: id,
        properties: {
          client: c,
          i,
          note: "chaos run: every accepted messageId must be in tributary.events FINAL exactly once",
        },
      })),
    );
  }

  async #client(c: number): Promise<void> {
    let seq = 0;
    while (this.#running) {
      const ids = Array.from({ length: this.o.eventsPerRequest }, () => `${this.o.prefix}-${c}-${seq++}`);
      const body = this.#body(ids, c);
      let ok = false;
      for (let attempt = 1; attempt <= this.o.maxAttempts; attempt++) {
        const target = this.#pick();
        if (!target) {
          await Bun.sleep(50);
          attempt--;
          if (!this.#running) break;
          continue;
        }
        const started = performance.now();
        let status = 0;
        let retryAfterMs = 100;
        let reason: string | undefined;
        try {
          const r = await fetch(`${target.url}/v1/events`, {
            method: "POST",
            headers: { Authorization: `Bearer ${this.o.writeKey}`, "Content-Type": "application/json" },
            body,
            signal: AbortSignal.timeout(this.o.timeoutMs),
          });
          const text = await r.text();
          status = r.status;
          if (status >= 300) {
            reason = text.slice(0, 120);
            try {
              reason = String((JSON.parse(text) as { error?: unknown }).error ?? reason);
            } catch {}
            const key = `${status} "${reason}"`;
            this.reasons.set(key, (this.reasons.get(key) ?? 0) + 1);
          }
          if (status >= 200 && status < 300) {
            let n = -1;
            try {
              n = (JSON.parse(text) as { accepted?: number }).accepted ?? -1;
            } catch {}
            if (n !== ids.length)
              this.anomalies.push(`${target.name} answered ${status} ${text.slice(0, 200)} for ${ids.length} events`);
          }
          const ra = Number(r.headers.get("retry-after"));
          if (Number.isFinite(ra) && ra > 0) retryAfterMs = Math.min(ra * 1000, 500);
        } catch (e) {
          status = 0;
          const key = `no answer (${(e as Error).name === "TimeoutError" ? `timeout ${this.o.timeoutMs} ms` : "connection refused or cut"})`;
          this.reasons.set(key, (this.reasons.get(key) ?? 0) + 1);
        }
        this.attempts.push({
          at: this.now(),
          status,
          ms: performance.now() - started,
          events: ids.length,
          target: target.name,
          ...(reason !== undefined && { reason }),
        });
        if (status >= 200 && status < 300) {
          ok = true;
          this.acceptedBatches.set(ids[0]!, { at: this.now(), target: target.name, attempt });
          if (attempt > 1) this.retriedOk++;
          break;
        }
        if (!this.#running) break;
        // Retry-After is honoured up to half a second: the run is short, and a retry storm is part of the test.
        await Bun.sleep(retryAfterMs * (0.5 + Math.random()));
      }
      if (ok) {
        this.accepted.push(...ids);
      } else {
        if (this.#running) this.abandoned++;
        for (const id of ids) this.unconfirmed.add(id);
      }
      if (this.o.pauseMs) await Bun.sleep(this.o.pauseMs);
    }
  }

  /** Stops starting batches and retries; waits for the requests in flight. */
  async stop(): Promise<void> {
    this.#running = false;
    await Promise.all(this.#clients);
  }
}
