/**
 * Requests per second to one destination, as a token bucket holding one second's worth: a burst
 * after a quiet period is allowed up to the rate, never beyond. Waiters are served in order.
 */
export class RequestRateLimiter {
  #tokens: number;
  #last = performance.now();
  #queue: Promise<void> = Promise.resolve();

  constructor(readonly perSecond: number) {
    this.#tokens = Math.max(1, perSecond);
  }

  /** Resolves when a request may leave; `signal` aborts the wait. */
  take(signal?: AbortSignal): Promise<void> {
    const turn = this.#queue.then(() => this.#takeOne(signal));
    this.#queue = turn.catch(() => {});
    return turn;
  }

  async #takeOne(signal?: AbortSignal): Promise<void> {
    for (;;) {
      signal?.throwIfAborted();
      const now = performance.now();
      this.#tokens = Math.min(Math.max(1, this.perSecond), this.#tokens + ((now - this.#last) / 1000) * this.perSecond);
      this.#last = now;
      if (this.#tokens >= 1) {
        this.#tokens -= 1;
        return;
      }
      await sleep(((1 - this.#tokens) / this.perSecond) * 1000, signal);
    }
  }
}

/** A sleep that an abort ends early, with the abort's reason. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
