import { Counter } from "prom-client";
import { registry } from "../util/metrics-registry.ts";

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

/** Rate-limited connections a node can hold buckets for when its threads share them. */
const SHARED_SLOTS = 4096;
/** Per slot: tokens, the time they were counted at, eventsPerMinute, burst. */
const VALUES = 4;

/**
 * The memory a node's ingest threads keep their buckets in (a SharedArrayBuffer, passed to each
 * thread), so a connection's limit holds per node however many threads answer it.
 */
export function sharedRateLimitState(): SharedArrayBuffer {
  return new SharedArrayBuffer(SHARED_SLOTS * (8 + VALUES * 8 + 4));
}

/** Buckets in shared memory: a slot per connection (claimed by compare-and-set of its name's hash), a lock per slot. */
class SharedBuckets {
  readonly #keys: BigInt64Array;
  readonly #values: Float64Array;
  readonly #locks: Int32Array;
  readonly #slots = new Map<string, number>();

  constructor(state: SharedArrayBuffer) {
    this.#keys = new BigInt64Array(state, 0, SHARED_SLOTS);
    this.#values = new Float64Array(state, SHARED_SLOTS * 8, SHARED_SLOTS * VALUES);
    this.#locks = new Int32Array(state, SHARED_SLOTS * (8 + VALUES * 8), SHARED_SLOTS);
  }

  #slot(connection: string): number {
    const slot = this.#slots.get(connection);
    if (slot !== undefined) return slot;
    let h = 0xcbf29ce484222325n;
    for (let i = 0; i < connection.length; i++)
      h = BigInt.asIntN(64, (h ^ BigInt(connection.charCodeAt(i))) * 0x100000001b3n);
    if (h === 0n) h = 1n;
    const start = Number(BigInt.asUintN(64, h) % BigInt(SHARED_SLOTS));
    for (let i = 0; i < SHARED_SLOTS; i++) {
      const at = (start + i) % SHARED_SLOTS;
      const was = Atomics.compareExchange(this.#keys, at, 0n, h);
      if (was === 0n || was === h) {
        this.#slots.set(connection, at);
        return at;
      }
    }
    throw new Error(`more than ${SHARED_SLOTS} rate-limited connections`);
  }

  /** Runs `f` on the connection's bucket under its slot's lock, and stores what it left. */
  with<T>(connection: string, limit: RateLimit, now: number, f: (b: TokenBucket) => T): T {
    const slot = this.#slot(connection);
    while (Atomics.compareExchange(this.#locks, slot, 0, 1) !== 0) Atomics.wait(this.#locks, slot, 1, 1);
    try {
      const v = this.#values;
      const o = slot * VALUES;
      const capacity = limit.burst ?? limit.eventsPerMinute;
      let b: TokenBucket;
      if (v[o + 3] === 0) b = new TokenBucket(limit.eventsPerMinute, capacity, now);
      else {
        b = new TokenBucket(v[o + 2]!, v[o + 3]!, v[o + 1]!, v[o]!);
        // A changed limit (configuration reload) keeps what was left, within the new burst.
        if (b.eventsPerMinute !== limit.eventsPerMinute || b.capacity !== capacity)
          b = new TokenBucket(limit.eventsPerMinute, capacity, now, b.tokens(now));
      }
      const result = f(b);
      v[o] = b.tokens(now);
      v[o + 1] = now;
      v[o + 2] = b.eventsPerMinute;
      v[o + 3] = b.capacity;
      return result;
    } finally {
      Atomics.store(this.#locks, slot, 0);
      Atomics.notify(this.#locks, slot, 1);
    }
  }
}

/**
 * The buckets of every rate-limited connection on this node. Given the node's shared state, every
 * ingest thread takes from the same buckets (times are then wall-clock, the same in every thread).
 */
export class RateLimiter {
  #buckets = new Map<string, TokenBucket>();
  readonly #shared?: SharedBuckets;
  private readonly now: () => number;

  constructor(now?: () => number, shared?: SharedArrayBuffer) {
    this.#shared = shared ? new SharedBuckets(shared) : undefined;
    this.now = now ?? (shared ? () => performance.timeOrigin + performance.now() : () => performance.now());
  }

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
    const now = this.now();
    if (this.#shared) {
      this.#limits.set(connection, limit);
      return this.#shared.with(connection, limit, now, (b) => b.take(n, now));
    }
    return this.#bucket(connection, limit).take(n, now);
  }

  /** The limit each connection was last taken with (a refund needs it to find its shared bucket). */
  readonly #limits = new Map<string, RateLimit>();

  refund(connection: string, n: number): void {
    const limit = this.#limits.get(connection);
    if (this.#shared && limit) this.#shared.with(connection, limit, this.now(), (b) => b.refund(n));
    else this.#buckets.get(connection)?.refund(n);
  }
}
