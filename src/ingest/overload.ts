/**
 * Admission control: bounds the bytes of request bodies being worked on at once, so a flood
 * of requests (or a slow JetStream) turns into 429s instead of an out-of-memory crash.
 */
export class InFlightLimiter {
  #bytes = 0;
  #requests = 0;
  rejected = 0;

  constructor(
    readonly maxBytes: number,
    readonly maxRequests: number,
  ) {}

  /** Reserves `bytes`; false when over a limit (the caller answers 429). */
  tryAcquire(bytes: number): boolean {
    if (this.#requests >= this.maxRequests || (this.#bytes > 0 && this.#bytes + bytes > this.maxBytes)) {
      this.rejected++;
      return false;
    }
    this.#bytes += bytes;
    this.#requests++;
    return true;
  }

  /**
   * Grows a reservation as a body arrives and once its real (inflated) size is known; false when
   * over the byte limit. As in {@link tryAcquire}, a request alone in flight always fits.
   */
  tryGrow(delta: number): boolean {
    if (delta <= 0) return true;
    if (this.#requests > 1 && this.#bytes + delta > this.maxBytes) {
      this.rejected++;
      return false;
    }
    this.#bytes += delta;
    return true;
  }

  release(bytes: number): void {
    this.#bytes -= bytes;
    this.#requests--;
  }

  get inFlightBytes(): number {
    return this.#bytes;
  }
  get inFlightRequests(): number {
    return this.#requests;
  }
}
