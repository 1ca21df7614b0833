import { Counter } from "prom-client";
import { registry } from "../ops/metrics.ts";

/**
 * Per-connection rate limits (PRODUCT.md §1 "Rate limits"): `rateLimit: {eventsPerMinute, burst}`
 * is a token bucket counted in events. It holds at most `burst` tokens (default: one minute's
 * worth, `eventsPerMinute`) and refills continuously at `eventsPerMinute / 60` per second. A
 * request takes as many tokens as it would store events (invalid ones, rejected by index, are not
 * counted); when the bucket holds fewer, the request is refused whole with 429 and nothing of it is
 * stored. Buckets live in each node's memory: with N nodes behind a load balancer the
 * connection's effective limit is N times the configured one.
 */

export const rateLimitedEvents = new Counter({
  name: "tributary_rate_limited_events_total",
  help: "Events refused with 429 because their connection's rate limit was reached, by connection",
  labelNames: ["connection"] as const,
  registers: [registry],
});

export interface RateLimit {
  eventsPerMinute: number;
  burst?: number;
}

export type RateDecision = { ok: true } | { ok: false; error: string; retryAfterSeconds?: number };

export class TokenBucket {
  #tokens: number;
  #at: number;
  readonly perMs: number;

  constructor(
    readonly eventsPerMinute: number,
    readonly capacity: number,
    now: number,
    tokens = capacity,
  ) {
    this.perMs = eventsPerMinute / 60_000;
    this.#tokens = Math.min(tokens, capacity);
    this.#at = now;
  }

  /** Tokens available at `now`. */
  tokens(now: number): number {
    if (now > this.#at) {
      this.#tokens = Math.min(this.capacity, this.#tokens + (now - this.#at) * this.perMs);
      this.#at = now;
    }
    return this.#tokens;
  }

  /** Takes `n` tokens, or says when there will be enough (in seconds, rounded up). */
  take(n: number, now: number): RateDecision {
    if (n > this.capacity)
      return {
        ok: false,
        error: `this request holds ${n} events, more than the connection's rate-limit burst of ${this.capacity}: it can never be accepted whole; send at most ${this.capacity} events per request`,
      };
    const have = this.tokens(now);
    if (have >= n) {
      this.#tokens = have - n;
      return { ok: true };
    }
    const retryAfterSeconds = Math.max(1, Math.ceil((n - have) / this.perMs / 1000));
    return {
      ok: false,
      error: `rate limit of ${this.eventsPerMinute} events per minute reached; retry in ${retryAfterSeconds} s`,
      retryAfterSeconds,
    };
  }

  /** Gives back tokens taken for events that were not stored after all. */
  refund(n: number): void {
    this.#tokens = Math.min(this.capacity, this.#tokens + n);
  }
}

/** The buckets of every rate-limited connection on this node. */
export class RateLimiter {
  #buckets = new Map<string, TokenBucket>();

  constructor(private readonly now: () => number = () => performance.now()) {}

  #bucket(connection: string, limit: RateLimit): TokenBucket {
    const capacity = limit.burst ?? limit.eventsPerMinute;
    let b = this.#buckets.get(connection);
    if (!b || b.eventsPerMinute !== limit.eventsPerMinute || b.capacity !== capacity) {
      // A changed limit (configuration reload) keeps what was left, within the new burst.
      const now = this.now();
      b = new TokenBucket(limit.eventsPerMinute, capacity, now, b ? b.tokens(now) : capacity);
      this.#buckets.set(connection, b);
    }
    return b;
  }

  /** Takes `n` events from the connection's bucket; always ok without a limit. */
  take(connection: string, limit: RateLimit | undefined, n: number): RateDecision {
    if (!limit) return { ok: true };
    return this.#bucket(connection, limit).take(n, this.now());
  }

  refund(connection: string, n: number): void {
    this.#buckets.get(connection)?.refund(n);
  }
}
